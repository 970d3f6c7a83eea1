"""Rows of preference, KTO and prompt-only (GRPO) datasets, encoded by the one encoder.

Layouts (ms-swift's):
  preference  {"messages": [..., {"role": "assistant", "content": chosen}], "rejected_response": "..."}
              or "rejected_messages": [...] (the whole rejected conversation, same prompt)
  kto         {"messages": [...], "label": true|false}
  prompts     {"messages": [... user turn], "solution": "...", ...}; a trailing assistant turn is dropped and
              every other column is handed to the reward functions.

The general parsing of these layouts belongs in ``data/formats.py``; this module holds only what
`tailorkit rlhf` needs and builds on ``formats.parse_row`` so that rows mean the same thing everywhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from ..data.collate import Collator
from ..data.dataset import load_conversations
from ..data.encode import Encoded, encode, encode_prompt
from ..data.formats import Conversation, parse_row
from ..errors import DataError, TooLongError

PREFERENCE_KEYS = ("rejected_response", "rejected_messages", "rejected_images")
_PLACEHOLDER_REPLY = {"role": "assistant", "content": "."}


@dataclass
class PreferencePair:
    chosen: Conversation
    rejected: Conversation


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


@dataclass
class EncodedKto:
    sample: Encoded
    kl: Encoded  # the prompt with another sample's reply: KTO's estimate of KL(policy || reference)
    label: bool
    ref_logps: float | None = None
    ref_kl_logps: float | None = None


def parse_preference_row(row, *, source=None, line=None, base_dir=None, system=None) -> PreferencePair:
    """A chosen/rejected pair sharing one prompt; errors name file, line and field."""
    where = dict(source=source, line=line)
    if not isinstance(row, dict):
        raise DataError(f"a row must be a JSON object, got {type(row).__name__}", **where)
    base = {k: v for k, v in row.items() if k not in PREFERENCE_KEYS}
    chosen = parse_row(base, source=source, line=line, base_dir=base_dir, system=system)
    if "rejected_messages" in row:
        rej_row = {**base, "messages": row["rejected_messages"]}
    elif "rejected_response" in row:
        text = row["rejected_response"]
        if not isinstance(text, str) or not text.strip():
            raise DataError("must be a non-empty string", field="rejected_response", **where)
        rej_row = {**base, "messages": list(base["messages"][:-1]) + [{"role": "assistant", "content": text}]}
    else:
        raise DataError("preference rows need 'rejected_response' or 'rejected_messages'", field="rejected_response",
                        fix='add {"rejected_response": "<the worse reply>"}', **where)
    if "rejected_images" in row:
        rej_row["images"] = row["rejected_images"]
    rejected = parse_row(rej_row, source=source, line=line, base_dir=base_dir, system=system)
    if chosen.messages[:-1] != rejected.messages[:-1] or chosen.images != rejected.images:
        raise DataError("chosen and rejected conversations must share the prompt (every message before the last "
                        "reply, and the images)", field="rejected_messages", **where)
    return PreferencePair(chosen, rejected)


def parse_kto_row(row, *, source=None, line=None, base_dir=None, system=None) -> KtoSample:
    """One conversation with a boolean 'label' (true: desirable reply)."""
    if isinstance(row, dict) and not isinstance(row.get("label"), bool):
        raise DataError(f"KTO rows need a boolean 'label', got {row.get('label')!r}", source=source, line=line,
                        field="label", fix='add "label": true for a desirable reply, false for an undesirable one')
    conv = parse_row({k: v for k, v in row.items() if k != "label"} if isinstance(row, dict) else row,
                     source=source, line=line, base_dir=base_dir, system=system)
    return KtoSample(conv, row["label"])


def parse_prompt_row(row, *, source=None, line=None, base_dir=None, system=None) -> PromptSample:
    """A rollout prompt; a trailing assistant reply is dropped, other columns are kept for the rewards."""
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise DataError("row needs a non-empty 'messages' list", source=source, line=line, field="messages")
    messages = list(row["messages"])
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        messages.pop()
    # parse_row checks a whole conversation; give it a reply and take it off again.
    conv = parse_row({**row, "messages": messages + [_PLACEHOLDER_REPLY]}, source=source, line=line,
                     base_dir=base_dir, system=system)
    conv.messages.pop()
    columns = {k: v for k, v in row.items() if k not in ("messages", "images")}
    return PromptSample(conv, columns)


def load_rows(specs: list[str], parse, *, system: str | None = None, seed: int = 42) -> list:
    """Parse every row of every dataset with ``parse``; all errors are reported together."""
    return load_conversations(specs, system=system, seed=seed, parse=parse, convs_of=_convs_of)


def _convs_of(item) -> list[Conversation]:
    if isinstance(item, PreferencePair):
        return [item.chosen, item.rejected]
    return [item.conv]


def encode_items(items: list, processor, *, max_length: int, truncation: str) -> tuple[list, Counter]:
    """Encode pairs / KTO samples with ``encode``; over-long items raise or (truncation='delete') are counted."""
    out, skipped = [], Counter()
    kto_replies = [s.conv.messages[-1] for s in items if isinstance(s, KtoSample)]
    for i, item in enumerate(items):
        try:
            if isinstance(item, PreferencePair):
                out.append(EncodedPair(encode(item.chosen, processor, max_length=max_length),
                                       encode(item.rejected, processor, max_length=max_length)))
            elif isinstance(item, KtoSample):
                other = kto_replies[(i + 1) % len(kto_replies)]
                kl_conv = Conversation(messages=item.conv.messages[:-1] + [other], images=item.conv.images,
                                       source=item.conv.source, line=item.conv.line, base_dir=item.conv.base_dir)
                out.append(EncodedKto(encode(item.conv, processor, max_length=max_length),
                                      encode(kl_conv, processor, max_length=max_length), item.label))
            else:
                raise TypeError(f"cannot encode {type(item).__name__}")
        except TooLongError:
            if truncation != "delete":
                raise
            skipped["longer than max_length"] += 1
    return out, skipped


def check_prompt_matches(sample: PromptSample, prompt_ids: list[int], reply: str, processor) -> None:
    """Raise unless ``prompt_ids`` (what a rollout was generated from) equal the training encoding's prompt.

    The training encoding of the conversation with ``reply`` appended must start with exactly these
    tokens, and its first supervised token must follow them.
    """
    conv = Conversation(messages=sample.conv.messages + [{"role": "assistant", "content": reply or "."}],
                        images=sample.conv.images, source=sample.conv.source, line=sample.conv.line,
                        base_dir=sample.conv.base_dir)
    full = encode(conv, processor)
    first = next((i for i, x in enumerate(full.labels) if x != -100), len(full.labels))
    if full.input_ids[:first] != prompt_ids:
        raise sample.conv.error(f"the rollout prompt ({len(prompt_ids)} tokens) differs from the training encoding "
                                f"of the same prompt ({first} tokens)", field="messages",
                                fix="rollouts must be built with data.encode.encode_prompt; report this as a bug")


def prompt_encoding(sample: PromptSample, processor) -> Encoded:
    """The rollout prompt of ``sample``, built by the one encoder."""
    return encode_prompt(sample.conv, processor)


class PairCollator:
    """Batch of pairs -> one padded batch [chosen..., rejected...] (one forward for both halves)."""

    def __init__(self, pad_token_id: int):
        self.collate = Collator(pad_token_id)

    def __call__(self, pairs: list[EncodedPair]) -> dict[str, torch.Tensor]:
        batch = self.collate([p.chosen for p in pairs] + [p.rejected for p in pairs])
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


def prompt_collate(samples: list[PromptSample]) -> dict:
    """GRPO batches stay Python objects: rollouts are generated inside the training step."""
    return {"prompts": list(samples)}
