"""Batch Encoded samples: pad token fields (right for training, left for generation), concatenate media."""

from __future__ import annotations

import torch

from .encode import IGNORE, Encoded


class Collator:
    """Right-padded training batch of Encoded samples (labels -100 on the padding)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, samples: list[Encoded]) -> dict[str, torch.Tensor]:
        return pad_batch(samples, self.pad_token_id)


def left_pad(prompts: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch of prompts, without labels: generation appends on the right."""
    return pad_batch(prompts, pad_id, left=True, labels=False)


def pad_batch(samples: list[Encoded], pad_token_id: int, *, left: bool = False, labels: bool = True
              ) -> dict[str, torch.Tensor]:
    """Token fields padded to the longest sample (on the left or right), media concatenated in sample order."""
    width = max(len(s) for s in samples)

    def pad(rows, value):
        return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r))
                             for r in rows], dtype=torch.long)

    batch = {"input_ids": pad([s.input_ids for s in samples], pad_token_id)}
    if labels:
        batch["labels"] = pad([s.labels for s in samples], IGNORE)
    batch["attention_mask"] = pad([[1] * len(s) for s in samples], 0)
    for key in samples[0].token_fields:
        batch[key] = pad([s.token_fields[key] for s in samples], 0)
    for key in sorted({k for s in samples for k in s.media}):
        batch[key] = combine_media([s.media[key] for s in samples if key in s.media])
    return batch


def combine_media(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate one media field of several samples along dim 0, in sample order.

    Where the samples' trailing sizes differ (LLaVA-NeXT / OneVision images cut into different numbers
    of tiles, Idefics3 samples with different numbers of images), the smaller ones are zero-padded at
    the end, as the model's own processor pads a batch: those models drop the padding again using
    ``image_sizes`` or the all-zero padding images.
    """
    if len({t.shape[1:] for t in tensors}) > 1:
        size = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
        tensors = [torch.nn.functional.pad(t, [p for d in reversed(range(1, t.dim()))
                                               for p in (0, size[d - 1] - t.shape[d])]) for t in tensors]
    return torch.cat(tensors, dim=0)
