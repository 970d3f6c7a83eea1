"""Batch Encoded samples: right-pad token fields, concatenate media tensors in sample order."""

from __future__ import annotations

import torch

from .encode import IGNORE, Encoded


class Collator:
    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, samples: list[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(s) for s in samples)

        def pad(rows, value):
            return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)

        batch = {
            "input_ids": pad([s.input_ids for s in samples], self.pad_token_id),
            "labels": pad([s.labels for s in samples], IGNORE),
            "attention_mask": pad([[1] * len(s) for s in samples], 0),
        }
        for key in samples[0].token_fields:
            batch[key] = pad([s.token_fields[key] for s in samples], 0)
        media_keys = {k for s in samples for k in s.media}
        for key in sorted(media_keys):
            batch[key] = torch.cat([s.media[key] for s in samples if key in s.media], dim=0)
        return batch
