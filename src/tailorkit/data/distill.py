"""Rows of on-policy distillation (gkd): conversations as for sft, each with the prompt its last reply answers.

The conversation trains as it is (labels on the replies) when a batch uses the dataset's completions; the
prompt (every message before the last reply, with the generation prompt) is where the student or the
teacher starts when a batch is generated instead. Both come from the one encoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .collate import Collator
from .dataset import EncodeReport, encode_one
from .encode import Encoded, encode_prompt
from .formats import Conversation
from .preference import EncodedPrompt, PromptSample


@dataclass
class EncodedDistill:
    full: Encoded  # the conversation with its replies supervised
    prompt: EncodedPrompt  # the conversation up to its last reply: where generated completions start

    def __len__(self) -> int:
        return len(self.full)


def encode_distill(conv: Conversation, processor, *, max_length: int, truncation: str,
                   report: EncodeReport) -> EncodedDistill | None:
    """The conversation (under the truncation strategy) and its prompt; None (counted) when it is skipped."""
    full = encode_one(conv, processor, max_length=max_length, truncation=truncation, report=report)
    if full is None:
        return None
    before_reply = dataclasses.replace(conv, messages=conv.messages[:-1])
    prompt = encode_prompt(before_reply, processor)
    if prompt.media.keys() == full.media.keys() and all(prompt.media[k].shape == full.media[k].shape
                                                       for k in prompt.media):
        prompt.media = full.media  # the same images: one copy of their pixels
    return EncodedDistill(full, EncodedPrompt(PromptSample(before_reply), prompt))


class DistillCollator:
    """The padded batch of the conversations, plus their prompts (Python objects) for generation."""

    def __init__(self, pad_token_id: int):
        self.collate = Collator(pad_token_id)

    def __call__(self, items: list[EncodedDistill]) -> dict[str, torch.Tensor | list]:
        batch = self.collate([i.full for i in items])
        batch["prompts"] = [i.prompt for i in items]
        return batch
