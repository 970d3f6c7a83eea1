"""Packing and padding-free batches: several encoded samples in one row, each with its own positions.

A packed row carries no attention mask. Isolation between its samples comes from ``position_ids``
that restart at 0 for each sample (a 4-row ``[text; t; h; w]`` tensor for mRoPE models, built per
sample with the model's own ``get_rope_index``) and from the segment-aware attention in
``tailorkit.train.attention``. The first label of every sample is ignored so that no token is ever
predicted from the previous sample's last token (unpacked, the shift drops it anyway).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import DataError
from .collate import Collator, combine_media
from .encode import IGNORE, Encoded


@dataclass
class Segment:
    """One encoded sample as it enters a packed row; ``mrope`` holds its (3, L) positions when the model needs them."""

    enc: Encoded
    mrope: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.enc)


@dataclass
class PackReport:
    samples_in: int = 0
    samples_out: int = 0
    packs: int = 0
    tokens: int = 0
    capacity: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    @property
    def fill(self) -> float:
        """Fraction of the packs' capacity holding tokens."""
        return self.tokens / max(self.packs * self.capacity, 1)

    def summary(self) -> str:
        text = (f"packed {self.samples_out} samples into {self.packs} rows of at most {self.capacity} tokens "
                f"({100 * self.fill:.1f}% full)")
        if self.skipped:
            text += "; skipped: " + ", ".join(f"{n} {why}" for why, n in self.skipped.items())
        return text


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sample indices, each summing to at most ``capacity``; every index appears exactly once.

    Samples are placed longest first into the open bin with the least room that still fits them.
    Callers must have removed samples longer than ``capacity``.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining room, bin id), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sample {i} has {n} tokens, more than the capacity {capacity}")
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, b = free.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, b))
    return bins


def _fit(samples: list, capacity: int, truncation: str, report: PackReport) -> list:
    kept = []
    for i, s in enumerate(samples):
        if len(s) <= capacity:
            kept.append(s)
        elif truncation == "delete":
            report.skipped["longer than packing_length"] += 1
        else:
            raise DataError(f"training sample {i} has {len(s)} tokens, more than packing_length {capacity}",
                            field="packing_length",
                            fix="raise --packing_length (it must be >= --max_length), or use "
                                "--truncation_strategy delete to skip such samples")
    return kept


def pack(samples: list, capacity: int, *, truncation: str = "raise") -> tuple[list[list], PackReport]:
    """Combine the whole dataset into packs by best-fit-decreasing over exact encoded lengths."""
    report = PackReport(samples_in=len(samples), capacity=capacity)
    kept = _fit(samples, capacity, truncation, report)
    packs = [[kept[i] for i in sorted(b)] for b in best_fit_decreasing([len(s) for s in kept], capacity)]
    report.packs, report.samples_out = len(packs), sum(len(p) for p in packs)
    report.tokens = sum(len(s) for p in packs for s in p)
    return packs, report


def rope_index_fn(model) -> Callable | None:
    """The model's ``get_rope_index`` (mRoPE families) or None for 1-D RoPE models."""
    for module in model.modules():
        fn = getattr(module, "get_rope_index", None)
        if callable(fn):
            return fn
    return None


_ROPE_INPUTS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")


def mrope_positions(enc: Encoded, rope_index: Callable) -> torch.Tensor:
    """The (3, L) mRoPE positions of one sample on its own, as the model computes them unpacked."""
    ids = torch.tensor([enc.input_ids])
    kwargs = {k: torch.tensor([enc.token_fields[k]]) for k in _ROPE_INPUTS if k in enc.token_fields}
    kwargs.update({k: v for k, v in enc.media.items() if k in _ROPE_INPUTS})
    if "mm_token_type_ids" not in kwargs:
        kwargs["mm_token_type_ids"] = torch.zeros_like(ids)
    with torch.no_grad():
        pos, _ = rope_index(ids, **kwargs)
    return pos[:, 0, :].clone()


def to_segments(samples: list[Encoded], model) -> list[Segment]:
    """Wrap encoded samples for packed batches, adding per-sample mRoPE positions where the model uses them."""
    rope_index = rope_index_fn(model)
    return [Segment(s, mrope_positions(s, rope_index) if rope_index is not None else None) for s in samples]


class FlatCollator:
    """Concatenate every sample of a batch into one row without padding (packing and padding-free).

    Items are Segments (padding-free) or lists of Segments (packs). Plain Encoded items, as the
    evaluation set holds, are never packed: they go to the padded ``Collator``.
    """

    def __init__(self, pad_token_id: int):
        self.padded = Collator(pad_token_id)

    def __call__(self, items: list) -> dict[str, torch.Tensor]:
        if all(isinstance(x, Encoded) for x in items):
            return self.padded(items)
        segments = [s for x in items for s in (x if isinstance(x, list) else [x])]
        return flatten(segments)


def flatten(segments: list[Segment]) -> dict[str, torch.Tensor]:
    """One row [1, T] of the segments, with positions restarting at 0 per segment and media in order."""
    ids, labels, text_pos = [], [], []
    for s in segments:
        ids += s.enc.input_ids
        labels += [IGNORE] + s.enc.labels[1:]
        text_pos += range(len(s))
    batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels])}
    position_ids = torch.tensor([text_pos])
    if any(s.mrope is not None for s in segments):
        if not all(s.mrope is not None for s in segments):
            raise ValueError("a packed row mixes samples with and without mRoPE positions")
        rope = torch.cat([s.mrope for s in segments], dim=1).unsqueeze(1)  # (3, 1, T)
        position_ids = torch.cat([position_ids.unsqueeze(0), rope], dim=0)  # (4, 1, T): text row first
    batch["position_ids"] = position_ids
    for key in segments[0].enc.token_fields:
        batch[key] = torch.tensor([[t for s in segments for t in s.enc.token_fields[key]]])
    for key in sorted({k for s in segments for k in s.enc.media}):
        batch[key] = combine_media([s.enc.media[key] for s in segments if key in s.enc.media])
    return batch
