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

import numpy as np
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


def pack_indices(lengths, capacity: int, *, truncation: str = "raise") -> tuple[list[list[int]], PackReport]:
    """Packs of sample indices (each pack's in ascending order) by best-fit-decreasing over ``lengths``.

    A sample longer than ``capacity`` is skipped and counted under ``truncation`` 'delete', else an error."""
    report = PackReport(samples_in=len(lengths), capacity=capacity)
    kept = []
    for i, n in enumerate(lengths):
        if n <= capacity:
            kept.append(i)
        elif truncation == "delete":
            report.skipped["longer than packing_length"] += 1
        else:
            raise DataError(f"training sample {i} has {n} tokens, more than packing_length {capacity}",
                            field="packing_length",
                            fix="raise --packing_length (it must be >= --max_length), or use "
                                "--truncation_strategy delete to skip such samples")
    bins = best_fit_decreasing([int(lengths[i]) for i in kept], capacity)
    packs = [sorted(kept[j] for j in b) for b in bins]
    report.packs, report.samples_out = len(packs), sum(len(p) for p in packs)
    report.tokens = sum(int(lengths[i]) for p in packs for i in p)
    return packs, report


def pack(samples: list, capacity: int, *, truncation: str = "raise") -> tuple[list[list], PackReport]:
    """Combine the whole dataset into packs by best-fit-decreasing over exact encoded lengths."""
    packs, report = pack_indices([len(s) for s in samples], capacity, truncation=truncation)
    return [[samples[i] for i in p] for p in packs], report


class PackedSet(torch.utils.data.Dataset):
    """Packs of a dataset's samples, each loaded (media included) when a batch asks for it: item ``i`` is the
    list of samples ``packs[i]``. Padding-free batches are packs of one sample each."""

    def __init__(self, data, packs: list[list[int]] | None = None):
        self.data = data
        sizes = [len(p) for p in packs] if packs is not None else [1] * len(data)
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.members = np.asarray([i for p in packs for i in p] if packs is not None else np.arange(len(data)),
                                  dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of each pack (what --group_by_length groups padding-free batches by)."""
        return np.add.reduceat(np.asarray(self.data.lengths)[self.members], self.offsets[:-1]) if len(self) else \
            np.zeros(0, dtype=np.int64)

    def __getitem__(self, i: int) -> list:
        if i < 0 or i >= len(self):
            raise IndexError(i)
        return [self.data[int(j)] for j in self.members[self.offsets[i]:self.offsets[i + 1]]]


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

    Items are Segments (padding-free) or lists of Segments or of Encoded samples (packs; an Encoded sample's
    mRoPE positions are computed here with ``rope_index``, the model's ``get_rope_index``, when it has one).
    Plain Encoded items, as the evaluation set holds, are never packed: they go to the padded ``Collator``.
    """

    def __init__(self, pad_token_id: int, rope_index: Callable | None = None):
        self.padded = Collator(pad_token_id)
        self.rope_index = rope_index

    def __call__(self, items: list) -> dict[str, torch.Tensor]:
        if all(isinstance(x, Encoded) for x in items):
            return self.padded(items)
        segments = [self._segment(s) for x in items for s in (x if isinstance(x, list) else [x])]
        return flatten(segments)

    def _segment(self, s) -> Segment:
        if isinstance(s, Segment):
            return s
        return Segment(s, mrope_positions(s, self.rope_index) if self.rope_index is not None else None)


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
