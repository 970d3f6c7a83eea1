"""Rows of preference, KTO and prompt-only (GRPO) datasets: parsed, encoded by the one encoder, batched.

Layouts (ms-swift's):
  preference  {"messages": [..., {"role": "assistant", "content": chosen}], "rejected_response": "..."}
              or "rejected_messages": [...] (the whole rejected conversation, same prompt)
  kto         {"messages": [...], "label": true|false}
  prompts     {"messages": [... user turn], "solution": "...", ...}; a trailing assistant turn is dropped and
              every other column is handed to the reward functions.

Rows are parsed and checked by ``formats.parse_row`` (which knows the preference and KTO fields), so they
mean the same thing everywhere. Encoding goes through ``dataset.encode_all`` / ``encode_one`` with every
``--truncation_strategy`` and the same end-of-preprocessing report as sft: a pair (or a KTO sample and its
KL companion) is kept only when both sides survive, and a skipped one is counted once, with its reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..errors import DataError
from .collate import Collator
from .dataset import EncodeReport, encode_all, encode_one, load_conversations
from .encode import Encoded, encode, encode_prompt
from .formats import Conversation, parse_row


@dataclass
class PreferencePair:
    chosen: Conversation
    rejected: Conversation
    margin: float | None = None  # rm: how much better chosen is (Bradley-Terry with a margin)


@dataclass
class KtoSample:
    conv: Conversation
    label: bool


@dataclass
class PromptSample:
    """A rollout prompt (messages end with a user turn) and the row's other columns (for rewards)."""

    conv: Conversation
    columns: dict = field(default_factory=dict)


@dataclass
class EncodedPair:
    chosen: Encoded
    rejected: Encoded
    ref_chosen_logps: float | None = None
    ref_rejected_logps: float | None = None
    margin: float | None = None

    def __len__(self) -> int:  # the padded width it needs (--group_by_length)
        return max(len(self.chosen), len(self.rejected))


@dataclass
class EncodedKto:
    sample: Encoded
    kl: Encoded  # the prompt with another sample's reply: KTO's estimate of KL(policy || reference)
    label: bool
    ref_logps: float | None = None
    ref_kl_logps: float | None = None

    def __len__(self) -> int:
        return max(len(self.sample), len(self.kl))


@dataclass
class EncodedPrompt:
    """A rollout prompt encoded once, up front: the tokens generation starts from at every step."""

    sample: PromptSample
    prompt: Encoded

    def __len__(self) -> int:
        return len(self.prompt)


# ---- parsing -------------------------------------------------------------------------------------------------

def parse_preference_row(row, *, source=None, line=None, base_dir=None, system=None) -> PreferencePair:
    """A chosen/rejected pair sharing one prompt (``formats.parse_row`` checks the pair)."""
    chosen = parse_row(row, source=source, line=line, base_dir=base_dir, system=system)
    if chosen.rejected is None:
        raise DataError("preference rows need 'rejected_response' or 'rejected_messages'", source=source, line=line,
                        field="rejected_response", fix='add {"rejected_response": "<the worse reply>"}')
    rejected = dataclasses.replace(chosen, messages=chosen.rejected, rejected=None)
    margin = row.get("margin") if isinstance(row, dict) else None
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise DataError(f"'margin' must be a number, got {margin!r}", source=source, line=line, field="margin",
                        fix="give how much better the chosen reply is as a number, or leave 'margin' out")
    return PreferencePair(dataclasses.replace(chosen, rejected=None), rejected,
                          None if margin is None else float(margin))


def parse_kto_row(row, *, source=None, line=None, base_dir=None, system=None) -> KtoSample:
    """One conversation with a boolean 'label' (true: desirable reply)."""
    conv = parse_row(row, source=source, line=line, base_dir=base_dir, system=system)
    if conv.label is None:
        raise DataError("KTO rows need a boolean 'label'", source=source, line=line, field="label",
                        fix='add "label": true for a desirable reply, false for an undesirable one')
    return KtoSample(conv, conv.label)


def parse_prompt_row(row, *, source=None, line=None, base_dir=None, system=None) -> PromptSample:
    """A rollout prompt; a trailing assistant reply is dropped, other columns are kept for the rewards."""
    if isinstance(row, dict) and isinstance(row.get("messages"), list) and row["messages"] \
            and isinstance(row["messages"][-1], dict) and row["messages"][-1].get("role") == "assistant":
        row = {**row, "messages": row["messages"][:-1]}
    conv = parse_row(row, source=source, line=line, base_dir=base_dir, system=system, need_reply=False)
    columns = {k: v for k, v in row.items() if k not in ("messages", "images")}
    return PromptSample(conv, columns)


def load_rows(specs: list[str], parse, *, system: str | None = None, seed: int = 42) -> list:
    """Parse every row of every dataset with ``parse``; all errors are reported together."""
    return load_conversations(specs, system=system, seed=seed, parse=parse, convs_of=convs_of)


def convs_of(item) -> list[Conversation]:
    """The conversations inside a parsed pair, KTO sample or prompt (their media are checked up front)."""
    if isinstance(item, PreferencePair):
        return [item.chosen, item.rejected]
    return [item.conv]


# ---- encoding ------------------------------------------------------------------------------------------------

def encode_pair(pair: PreferencePair, processor, *, max_length: int, truncation: str,
                report: EncodeReport) -> EncodedPair | None:
    """Both sides encoded under the truncation strategy; None (counted once) unless both survive."""
    sides = encode_together([pair.chosen, pair.rejected], processor, max_length=max_length, truncation=truncation,
                            report=report)
    return None if sides is None else EncodedPair(*sides, margin=pair.margin)


def encode_kto(item: tuple[KtoSample, Conversation], processor, *, max_length: int, truncation: str,
               report: EncodeReport) -> EncodedKto | None:
    """A KTO sample and its KL companion (``kto_with_companions``); None (counted once) unless both survive."""
    sample, companion = item
    sides = encode_together([sample.conv, companion], processor, max_length=max_length, truncation=truncation,
                            report=report)
    return None if sides is None else EncodedKto(sides[0], sides[1], sample.label)


def encode_prompt_sample(sample: PromptSample, processor, *, max_length: int, truncation: str,
                         report: EncodeReport) -> EncodedPrompt | None:
    """A rollout prompt; one over ``max_length`` raises or is skipped (a prompt has no reply, so it is never cut)."""
    prompt = encode_one(sample.conv, processor, max_length=max_length, truncation=truncation, report=report,
                        encoder=encode_prompt)
    return None if prompt is None else EncodedPrompt(sample, prompt)


def encode_together(convs: list[Conversation], processor, *, max_length: int, truncation: str,
                    report: EncodeReport) -> list[Encoded] | None:
    """Encode conversations that train only together; the first one skipped skips the group (counted once)."""
    own = EncodeReport()
    out = []
    for conv in convs:
        enc = encode_one(conv, processor, max_length=max_length, truncation=truncation, report=own)
        if enc is None:
            report.skipped.update(own.skipped)
            return None
        out.append(enc)
    report.truncated += 1 if own.truncated else 0
    return out


def kto_with_companions(items: list[KtoSample]) -> list[tuple[KtoSample, Conversation]]:
    """Each KTO sample with its KL companion: its prompt with the next sample's reply (the last takes the first's)."""
    replies = [s.conv.messages[-1] for s in items]
    return [(s, dataclasses.replace(s.conv, messages=s.conv.messages[:-1] + [replies[(i + 1) % len(replies)]],
                                    label=None))
            for i, s in enumerate(items)]


def encode_kto_all(items: list[KtoSample], processor, *, max_length: int, truncation: str, desc: str = "encoding"
                   ) -> tuple[list[EncodedKto], EncodeReport]:
    """``dataset.encode_all`` for KTO samples, each paired with its KL companion first."""
    return encode_all(kto_with_companions(items), processor, max_length=max_length, truncation=truncation,
                      desc=desc, encode_item=encode_kto)


def check_prompt_matches(sample: PromptSample, prompt_ids: list[int], reply: str, processor) -> None:
    """Raise unless ``prompt_ids`` (what a rollout was generated from) equal the training encoding's prompt.

    The training encoding of the conversation with ``reply`` appended must start with exactly these
    tokens, and its first supervised token must follow them.
    """
    conv = dataclasses.replace(sample.conv, messages=sample.conv.messages + [{"role": "assistant",
                                                                              "content": reply or "."}])
    full = encode(conv, processor)
    first = next((i for i, x in enumerate(full.labels) if x != -100), len(full.labels))
    if full.input_ids[:first] != prompt_ids:
        raise sample.conv.error(f"the rollout prompt ({len(prompt_ids)} tokens) differs from the training encoding "
                                f"of the same prompt ({first} tokens)", field="messages",
                                fix="rollouts must be built with data.encode.encode_prompt; report this as a bug")


# ---- batching ------------------------------------------------------------------------------------------------

class PairCollator:
    """Batch of pairs -> one padded batch [chosen..., rejected...] (one forward for both halves), or with
    ``concatenated=False`` the chosen batch and the rejected one (keys prefixed 'rejected_')."""

    def __init__(self, pad_token_id: int, concatenated: bool = True):
        self.collate = Collator(pad_token_id)
        self.concatenated = concatenated

    def __call__(self, pairs: list[EncodedPair]) -> dict[str, torch.Tensor]:
        if self.concatenated:
            batch = self.collate([p.chosen for p in pairs] + [p.rejected for p in pairs])
        else:
            batch = self.collate([p.chosen for p in pairs])
            batch.update({f"rejected_{k}": v for k, v in self.collate([p.rejected for p in pairs]).items()})
        if any(p.margin is not None for p in pairs):
            batch["margin"] = torch.tensor([p.margin or 0.0 for p in pairs])
        if pairs[0].ref_chosen_logps is not None:
            batch["ref_chosen_logps"] = torch.tensor([p.ref_chosen_logps for p in pairs])
            batch["ref_rejected_logps"] = torch.tensor([p.ref_rejected_logps for p in pairs])
        return batch


class KtoCollator:
    """Batch of KTO samples: the samples, their KL companions (keys prefixed 'kl_') and the labels."""

    def __init__(self, pad_token_id: int):
        self.collate = Collator(pad_token_id)

    def __call__(self, items: list[EncodedKto]) -> dict[str, torch.Tensor]:
        batch = self.collate([s.sample for s in items])
        batch.update({f"kl_{k}": v for k, v in self.collate([s.kl for s in items]).items()})
        batch["label"] = torch.tensor([s.label for s in items], dtype=torch.bool)
        if items[0].ref_logps is not None:
            batch["ref_logps"] = torch.tensor([s.ref_logps for s in items])
            batch["ref_kl_logps"] = torch.tensor([s.ref_kl_logps for s in items])
        return batch


def prompt_collate(items: list[EncodedPrompt]) -> dict:
    """GRPO batches stay Python objects: rollouts are generated (and left-padded) inside the training step."""
    return {"prompts": list(items)}
