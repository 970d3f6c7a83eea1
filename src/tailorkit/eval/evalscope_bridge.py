"""`--eval_backend evalscope`: EvalScope scores the model through our own OpenAI-compatible server.

The tasks are written in EvalScope's custom formats (general_qa / general_vqa for qa data, general_mcq /
general_vmcq for multiple choice; images as data: URIs), our server starts on 127.0.0.1 with a one-time
API key, EvalScope runs against it in its own environment (it cannot share ours: every EvalScope from
0.17 pins datasets<=4.8.4 and tailorkit needs datasets 5), the server stops, and EvalScope's per-sample
and per-task numbers are read back into our report.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import subprocess
import sys
from pathlib import Path

from ..data.formats import text_of
from ..data.media import load_image
from ..errors import ConfigError, TailorkitError
from ..infer.engine import GenerationSettings
from .scoring import TaskOutcome, prediction_row
from .tasks import LETTERS, EvalItem, Task

ENV_DIR = ".venv-evalscope"
SETUP = "bash scripts/setup_evalscope.sh"
SERVED_BASE = "tailorkit-base"
# Runs inside EvalScope's environment: nothing of tailorkit is imported there.
_RUNNER = ("import json, sys\nfrom evalscope import TaskConfig, run_task\n"
           "run_task(TaskConfig(**json.load(open(sys.argv[1]))))\n")
_KEY_ORDER = ("ngram", "variant", "statistic")


def find_python(given: str | None) -> str:
    """The python of an environment that has EvalScope; the error says how to make one."""
    candidates = [given] if given else [str(Path(sys.prefix).parent / ENV_DIR / "bin" / "python"), sys.executable]
    for python in candidates:
        if Path(python).is_file() and subprocess.run(
                [python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('evalscope') is None)"],
                capture_output=True).returncode == 0:
            return python
    where = f"--evalscope_python {given} has no evalscope" if given else f"no evalscope in {candidates[0]} or here"
    raise ConfigError(f"--eval_backend evalscope needs EvalScope ({where}). It cannot share tailorkit's environment "
                      f"(it pins datasets<=4.8.4; tailorkit needs datasets 5): run `{SETUP}`, which creates "
                      f"{ENV_DIR}/ next to .venv with the pinned evalscope, or pass --evalscope_python")


def check(cfg, adapters: dict, tasks: list[Task]) -> str:
    """Everything checkable before the model loads: EvalScope's python, convertible tasks, one adapter."""
    python = find_python(cfg.eval.evalscope_python)
    if len(adapters) > 1:
        raise ConfigError("--eval_backend evalscope scores one adapter at a time (the server serves each under its "
                          "name); give one --adapters, or use --eval_backend native to apply them together")
    for task in tasks:
        if task.layout not in ("qa", "mcq"):
            raise ConfigError(f"{task.name}: --eval_backend evalscope scores qa and mcq data (EvalScope's custom "
                              f"formats); score {task.layout} with --eval_backend native")
    return python


def _data_uri(src, base_dir) -> str:
    buf = io.BytesIO()
    load_image(src, base_dir).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _openai_messages(item: EvalItem) -> list[dict]:
    """The prompt as OpenAI chat messages; each image part becomes an image_url with a data: URI."""
    conv, images = item.conversation, iter(item.conversation.images)
    out = []
    for m in conv.messages:
        content = m["content"]
        if isinstance(content, list):
            content = [{"type": "image_url", "image_url": {"url": _data_uri(next(images), conv.base_dir)}}
                       if p["type"] == "image" else {"type": "text", "text": p["text"]} for p in content]
        out.append({"role": m["role"], "content": content})
    return out


def _mcq_record(item: EvalItem, index: int) -> tuple[str, dict]:
    """(benchmark, record) of a multiple-choice item: one user question, its options and the right letter."""
    users = [m for m in item.conversation.messages if m["role"] != "system"]
    if len(users) != 1 or len(users) != len(item.conversation.messages):
        raise ConfigError(f"{item.source}: EvalScope's multiple-choice format holds one user question without a "
                          "system prompt or earlier turns; score this row with --eval_backend native")
    question = item.meta.get("question", text_of(users[0]["content"]))
    options = item.meta.get("options", item.choices)
    answer = LETTERS[item.choices.index(item.reference)]
    if not item.conversation.images:
        return "general_mcq", {"id": index, "question": question, **dict(zip(LETTERS, options)), "answer": answer}
    record = {"question": "".join(f"<image {k + 1}>" for k in range(len(item.conversation.images))) + question,
              "options": options, "answer": answer}
    for k, src in enumerate(item.conversation.images):
        record[f"image_{k + 1}"] = _data_uri(src, item.conversation.base_dir)
    return "general_vmcq", record


def write_inputs(tasks: list[Task], folder: Path) -> dict[str, dict[str, Task]]:
    """One EvalScope subset file per task ({benchmark: {subset: task}}); only qa and mcq tasks convert."""
    plan: dict[str, dict[str, Task]] = {}
    for task in tasks:
        if task.layout == "qa":
            bench = "general_vqa" if any(i.conversation.images for i in task.items) else "general_qa"
            records = [{"messages": _openai_messages(i), "answer": i.reference} for i in task.items]
            name = f"{task.name}.jsonl"
        elif task.layout == "mcq":
            pairs = [_mcq_record(item, k) for k, item in enumerate(task.items)]
            bench = pairs[0][0] if len({b for b, _ in pairs}) == 1 else None
            if bench is None:
                raise ConfigError(f"{task.name}: EvalScope needs a multiple-choice file either all with images or "
                                  "all without; split it in two")
            records = [r for _, r in pairs]
            name = f"{task.name}_val.jsonl" if bench == "general_mcq" else f"{task.name}.jsonl"
        else:
            raise ConfigError(f"{task.name}: {task.layout} has no EvalScope custom format")
        (folder / bench).mkdir(parents=True, exist_ok=True)
        (folder / bench / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        plan.setdefault(bench, {})[task.name] = task
    return plan


def task_config(plan: dict, folder: Path, url: str, key: str, model: str, settings: GenerationSettings,
                batch_size: int, work: Path) -> dict:
    generation = {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature}
    if settings.temperature > 0:
        generation.update(top_p=settings.top_p, **({"seed": settings.seed} if settings.seed is not None else {}))
    if settings.stop:
        generation["stop"] = list(settings.stop)
    return {"model": model, "api_url": f"{url}/v1", "api_key": key, "eval_type": "openai_api",
            "datasets": list(plan),
            "dataset_args": {b: {"local_path": str(folder / b), "subset_list": list(subsets)}
                             for b, subsets in plan.items()},
            "generation_config": generation, "eval_batch_size": batch_size, "work_dir": str(work),
            "no_timestamp": True, "seed": settings.seed if settings.seed is not None else 42}


def run_evalscope(cfg, engine, tasks: list[Task], settings: GenerationSettings, adapters: tuple[str, ...],
                  out: Path):
    """Serve ``engine`` on 127.0.0.1, run EvalScope on ``tasks`` against it, stop the server; a TaskOutcome."""
    from ..serve.app import ServerOptions, create_app
    from ..serve.deploy import start_background
    from ..serve.media import MediaPolicy
    from ..serve.protocol import Limits
    python = check(cfg, dict.fromkeys(adapters), tasks)
    work = out / "evalscope"
    plan = write_inputs(tasks, work / "data")
    key, model = secrets.token_urlsafe(24), adapters[0] if adapters else SERVED_BASE
    opts = ServerOptions(base_name=SERVED_BASE, limits=Limits(default=settings, max_tokens=settings.max_new_tokens),
                         policy=MediaPolicy(), api_key=key, max_request_bytes=512 * 1024 * 1024,
                         max_batch_size=cfg.engine.max_batch_size)
    log = work / "evalscope.log"
    print(f"[tailorkit] EvalScope ({python}) is scoring {', '.join(t.name for t in tasks)} through a server on "
          f"127.0.0.1; log: {log}")
    with start_background(create_app(engine, opts)) as server:
        config = task_config(plan, work / "data", server.url, key, model, settings, cfg.engine.max_batch_size,
                             work / "run")
        (work / "task.json").write_text(json.dumps(config))
        with log.open("w") as f:
            done = subprocess.run([python, "-c", _RUNNER, str(work / "task.json")], stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise TailorkitError(f"EvalScope failed (exit {done.returncode}); the end of {log}:\n{tail}")
    metrics, predictions, errors = read_results(work / "run", model, plan)
    for task, problems in errors.items():
        why = " ".join(next(iter(problems.values())).split())[:200]
        print(f"[tailorkit] warning: EvalScope could not compute {', '.join(problems)} on {task} (left out of the "
              f"report): {why}")
    return TaskOutcome(metrics, {t.name: len(t.items) for t in tasks}, predictions)


def metric_name(identity: dict) -> str:
    """EvalScope's metric identity as one name: bleu {ngram: 4} -> 'bleu-4', rouge {variant: l, statistic: f1}
    -> 'rouge-l-f1'."""
    dims = identity.get("dimensions") or {}
    keys = [k for k in _KEY_ORDER if k in dims] + sorted(k for k in dims if k not in _KEY_ORDER)
    return "-".join([str(identity["name"]), *(str(dims[k]).lower() for k in keys)])


def read_results(run: Path, model: str, plan: dict[str, dict[str, Task]]):
    """(metrics per task, prediction rows, metric errors per task) from EvalScope's reports and reviews."""
    metrics: dict[str, dict[str, float]] = {}
    predictions, errors = [], {}
    for bench, subsets in plan.items():
        path = run / "reports" / model / f"{bench}.json"
        try:
            report = json.loads(path.read_text())
            for m in report["metrics"]:
                for cat in m["categories"]:
                    for sub in cat["subsets"]:
                        if sub["name"] in subsets:
                            metrics.setdefault(sub["name"], {})[metric_name(m["identity"])] = float(sub["score"])
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise TailorkitError(f"cannot read EvalScope's report {path} ({type(e).__name__}: {e}); it was written "
                                 "by an EvalScope whose format this version does not know (made for 1.14)") from None
        for name, task in subsets.items():
            rows, problems = _reviews(run / "reviews" / model / f"{bench}_{name}.jsonl", name, task)
            predictions += rows
            if problems:
                errors[name] = problems
                bad = {k.split("-")[0].lower() for k in problems}
                metrics[name] = {k: v for k, v in metrics.get(name, {}).items() if k.split("-")[0] not in bad}
    return metrics, predictions, errors


def _reviews(path: Path, name: str, task: Task) -> tuple[list[dict], dict[str, str]]:
    rows, problems = [], {}
    reviews = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: int(r["index"]))
    for review in reviews:
        score = review["sample_score"]["score"]
        failed = (score.get("metadata") or {}).get("metric_errors") or {}
        problems.update(failed)
        bad = {k.lower() for k in failed}
        values = {k: v for k, v in (score.get("value") or {}).items() if k.split("-")[0].lower() not in bad}
        item = task.items[int(review["index"])]
        rows.append(prediction_row(name, item, score.get("prediction") or "", values, None))
    return rows, problems
