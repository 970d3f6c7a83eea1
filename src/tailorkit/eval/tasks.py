"""Evaluation tasks: what `--eval_dataset` names, read from local files into prompts with references.

A spec is ``[layout:]path[#N]``. The layout is detected from the file (or named): ``qa`` (the user's own
data in any sft format; the last assistant turn is the reference), ``mcq`` (multiple choice scored by
likelihood), ``mme``, ``textvqa``, ``vqav2`` (the benchmarks' released layouts). Everything is read and
checked before a model loads.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..data.dataset import load_conversations
from ..data.formats import Conversation, parse_row, text_of
from ..data.sources import iter_rows, split_spec
from ..errors import ConfigError, DataError
from . import mme, vqa
from .metrics import mean_scores, text_scores

LETTERS = "ABCDEFGHIJ"


@dataclass
class EvalItem:
    """One prompt to answer (a conversation ending with a user turn) and what a right answer is."""

    conversation: Conversation
    reference: str  # the expected reply (for VQA the most common annotator answer, for mcq the right choice)
    choices: list[str] | None = None  # mcq: the candidate replies scored by likelihood
    answers: list[str] | None = None  # VQA: every annotator's answer
    meta: dict = field(default_factory=dict)  # layout-specific (MME category and image pair)

    @property
    def source(self) -> str:
        return f"{self.conversation.source}:{self.conversation.line}"


@dataclass
class Task:
    name: str
    layout: str
    path: str
    items: list[EvalItem]


@dataclass(frozen=True)
class Layout:
    """How a layout is read and scored. ``likelihood`` layouts rank ``choices`` by log-probability instead
    of generating; ``score`` gets the reply (or the chosen option) and the item."""

    read: Callable[[str, str | None], list[EvalItem]]  # (spec, system) -> items
    score: Callable[[str, EvalItem], dict[str, float]]
    aggregate: Callable[[list[EvalItem], list[dict]], dict[str, float]]
    likelihood: bool = False


def _prompt_and_reference(conv: Conversation) -> tuple[Conversation, str]:
    return replace(conv, messages=conv.messages[:-1]), text_of(conv.messages[-1]["content"])


def read_qa(spec: str, system: str | None) -> list[EvalItem]:
    """Rows of any sft layout; the last assistant message is the reference, the messages before it the prompt."""
    items = []
    for conv in load_conversations([spec], system=system):
        prompt, reference = _prompt_and_reference(conv)
        items.append(EvalItem(prompt, reference))
    return items


def _parse_mcq(row, *, source=None, line=None, base_dir=None, system=None):
    """An mcq row: an sft row with ``choices`` (its last assistant message is the right one), or an EvalScope
    general_mcq row (``question``, options ``A``, ``B`` ..., ``answer`` letter), whose prompt lists the
    lettered options and whose choices are the letters."""
    meta = {}
    if isinstance(row, dict) and "choices" not in row and {"question", "A", "B", "answer"} <= row.keys():
        letters = [c for c in LETTERS if c in row]
        meta = {"question": str(row["question"]), "options": [str(row[c]) for c in letters]}
        options = "\n".join(f"{c}. {row[c]}" for c in letters)
        row = {"messages": [{"role": "user", "content": f"{row['question']}\n{options}"},
                            {"role": "assistant", "content": str(row["answer"]).strip()}],
               "images": row.get("images", []), "choices": letters}
    conv = parse_row(row, source=source, line=line, base_dir=base_dir, system=system)
    choices = row.get("choices") if isinstance(row, dict) else None
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise conv.error("needs a list of at least 2 non-empty strings", field="choices",
                         fix='give the candidate replies, e.g. "choices": ["red", "blue", "green"]')
    reference = text_of(conv.messages[-1]["content"])
    if reference not in choices:
        raise conv.error(f"the reply {reference!r} is not one of the choices {choices}", field="choices",
                         fix="the last assistant message must be the right choice, spelled as in 'choices'")
    return conv, choices, meta


def read_mcq(spec: str, system: str | None) -> list[EvalItem]:
    parsed = load_conversations([spec], system=system, parse=_parse_mcq, convs_of=lambda item: [item[0]])
    items = []
    for conv, choices, meta in parsed:
        prompt, reference = _prompt_and_reference(conv)
        items.append(EvalItem(prompt, reference, choices=list(choices), meta=meta))
    return items


def score_mcq(chosen: str, item: EvalItem) -> dict[str, float]:
    return {"acc": float(chosen == item.reference), "chance": 1 / len(item.choices)}


def _user_item(question: str, image, system: str | None, source: str, line: int) -> Conversation:
    row = {"messages": [{"role": "user", "content": "<image>" + question}], "images": [image]}
    return parse_row(row, source=source, line=line, system=system, need_reply=False)


def _no_sampling(spec: str, layout: str) -> Path:
    path, n = split_spec(spec)
    if n is not None:
        raise ConfigError(f"--eval_dataset {spec}: '#N' sampling is for row files; use --eval_limit with {layout}")
    return Path(path)


def read_mme(spec: str, system: str | None) -> list[EvalItem]:
    path = _no_sampling(spec, "mme")
    records = mme.mme_records(path) if path.is_dir() and mme.category_dirs(path) else mme.mme_row_records(str(path))
    return [EvalItem(_user_item(r["question"], r["image"], system, r["source"], r["line"]), r["answer"],
                     meta={"category": r["category"], "pair": r["pair"]}) for r in records]


def score_mme(response: str, item: EvalItem) -> dict[str, float]:
    return {"acc": float(mme.parse_yes_no(response) == item.reference)}


def aggregate_mme(items: list[EvalItem], scores: list[dict]) -> dict[str, float]:
    return mme.mme_scores([i.meta for i in items], [s["acc"] == 1.0 for s in scores])


def _vqa_reader(records_of):
    def read(spec: str, system: str | None) -> list[EvalItem]:
        path = _no_sampling(spec, "textvqa/vqav2")
        items = []
        for r in records_of(path):
            conv = _user_item(r["question"] + vqa.VQA_PROMPT_SUFFIX, r["image"], system, str(path), r["line"])
            common = max(set(r["answers"]), key=r["answers"].count)
            items.append(EvalItem(conv, common, answers=r["answers"]))
        return items
    return read


def score_vqa(response: str, item: EvalItem) -> dict[str, float]:
    return {"vqa_acc": vqa.vqa_accuracy(response, item.answers), "exact_match": text_scores(
        response, item.reference)["exact_match"]}


def _mean(items: list[EvalItem], scores: list[dict]) -> dict[str, float]:
    return mean_scores(scores)


LAYOUTS: dict[str, Layout] = {
    "qa": Layout(read_qa, lambda r, item: text_scores(r, item.reference), _mean),
    "mcq": Layout(read_mcq, score_mcq, _mean, likelihood=True),
    "mme": Layout(read_mme, score_mme, aggregate_mme),
    "textvqa": Layout(_vqa_reader(vqa.textvqa_records), score_vqa, _mean),
    "vqav2": Layout(_vqa_reader(vqa.vqav2_records), score_vqa, _mean),
}
BENCHMARK_NAMES = {"mme": "mme", "textvqa": "textvqa", "text_vqa": "textvqa", "vqav2": "vqav2", "vqa_v2": "vqav2"}
_HUB_HINT = {"mme": "MME_Benchmark_release_version/ (category folders with questions_answers_YN/)",
             "textvqa": "TextVQA_0.5.1_val.json with train_images/ beside it",
             "vqav2": "v2_mscoco_val2014_annotations.json with its questions file and val2014/ beside it"}


def split_layout(spec: str) -> tuple[str | None, str]:
    """'mme:/data/MME' -> ('mme', '/data/MME'); a hub id's ':subset' is not a layout."""
    head, sep, rest = spec.partition(":")
    if sep and head in LAYOUTS:
        return head, rest
    return None, spec


def detect_layout(path: str) -> str:
    """The layout of a local file or folder, from its content."""
    p = Path(split_spec(path)[0])
    if p.is_dir():
        return "mme" if mme.looks_like_mme(p) or mme.looks_like_mme_rows(str(p)) else "qa"
    if p.suffix == ".json":
        data = vqa.read_json(p)
        if vqa.looks_like_textvqa(data):
            return "textvqa"
        if vqa.looks_like_vqav2(data):
            return "vqav2"
    first = next((row for _, row in iter_rows(str(p))), None)
    if isinstance(first, dict) and ("choices" in first or {"question", "A", "B", "answer"} <= first.keys()):
        return "mcq"
    if isinstance(first, dict) and mme.is_mme_row(first):
        return "mme"
    return "qa"


def task_name(layout: str, path: str, taken: set[str]) -> str:
    """A short unique name: the benchmark's name, or the data file's name without extension."""
    stem = layout if layout in _HUB_HINT else (Path(split_spec(path)[0].rstrip("/")).stem or layout)
    name = re.sub(r"[^\w.-]+", "_", stem)
    if name in taken:
        name = f"{layout}_{name}"
    k = 2
    base = name
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def load_task(spec: str, *, system: str | None = None, limit: int | None = None, taken: set[str] = frozenset()
              ) -> Task:
    """Read one ``--eval_dataset`` spec (every row checked; the first ``limit`` items kept)."""
    layout, path = split_layout(spec)
    if not Path(split_spec(path)[0]).exists():
        layout = _not_local(spec, layout, path)
    layout = layout or detect_layout(path)
    try:
        items = LAYOUTS[layout].read(path, system)
    except DataError as e:
        if Path(split_spec(path)[0]).exists():
            raise
        raise ConfigError(f"--eval_dataset {spec}: {e}; datasets cannot be fetched from the hub here: download it "
                          f"elsewhere (huggingface-cli download --repo-type dataset {path.split(':')[0]} --local-dir "
                          f"DIR) and pass --eval_dataset {layout}:DIR") from None
    if limit is not None:
        items = _limit(items, limit)
    if not items:
        raise DataError("no rows to evaluate", source=path)
    return Task(task_name(layout, path, set(taken)), layout, path, items)


def _limit(items: list[EvalItem], limit: int) -> list[EvalItem]:
    """The first ``limit`` items; an MME question pair is never split (acc+ needs both)."""
    kept = items[:limit]
    pair = kept[-1].meta.get("pair") if kept else None
    if pair is not None and limit < len(items) and items[limit].meta.get("pair") == pair:
        kept = [i for i in kept if i.meta.get("pair") != pair] or items[: limit + 1]
    return kept


def _not_local(spec: str, layout: str | None, path: str) -> str:
    """The layout of a spec that names nothing on this machine: a hub id of sft rows (read through
    `datasets`, which may have it cached), else an error saying how to point at a local copy."""
    bench = BENCHMARK_NAMES.get((layout or path).lower())
    if bench is not None and (layout is None or not path):
        raise ConfigError(f"--eval_dataset {spec}: the {bench} benchmark cannot be downloaded here; download it "
                          f"elsewhere and point at the local copy: --eval_dataset {bench}:/path/to/"
                          f"{_HUB_HINT[bench]}")
    if layout in _HUB_HINT:
        raise ConfigError(f"--eval_dataset {spec}: {path} does not exist; expected {_HUB_HINT[layout]}")
    if "/" not in path or path.startswith((".", "/")) or Path(split_spec(path)[0]).suffix:
        raise ConfigError(f"--eval_dataset {spec}: {split_spec(path)[0]} does not exist")
    return layout or "qa"


def load_tasks(specs: list[str], *, system: str | None = None, limit: int | None = None) -> list[Task]:
    """Every ``--eval_dataset`` read and checked (before any model loads)."""
    if not specs:
        raise ConfigError("--eval_dataset is required: files or folders to evaluate on (see tailorkit eval --help)")
    tasks: list[Task] = []
    for spec in specs:
        tasks.append(load_task(spec, system=system, limit=limit, taken={t.name for t in tasks}))
    return tasks
