"""The training data a run iterates: items of an encoded store, their media loaded when a batch asks for them.

``EncodedSet`` is a map-style torch Dataset. Up front it holds nothing per row but the store's
memory-mapped arrays (token ids, labels, lengths); ``__getitem__`` reads one item and runs the processor
on its media (``encode.materialize``), inside the data loader's workers when
``--dataloader_num_workers`` is set. Packing and length grouping read ``lengths`` and never load media.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import torch

from .encode import Encoded, materialize
from .store import Store


def materialize_item(item, processor):
    """``item`` (an Encoded, or a dataclass holding Encoded fields, at any depth) with every sample's media
    loaded."""
    if isinstance(item, Encoded):
        return materialize(item, processor)
    loaded = {f.name: materialize_item(getattr(item, f.name), processor) for f in dataclasses.fields(item)
              if isinstance(getattr(item, f.name), Encoded) or dataclasses.is_dataclass(getattr(item, f.name))}
    return dataclasses.replace(item, **loaded)


class EncodedSet(torch.utils.data.Dataset):
    """Items ``order`` (all by default) of ``store``, loaded one at a time; ``key`` names the encoded data."""

    def __init__(self, store: Store, processor, key: str, order: np.ndarray | None = None):
        self.store, self.processor, self.key = store, processor, key
        self.order = order
        self.extra: dict[str, np.ndarray] = {}  # per-item values set after encoding (reference log-probs)

    def __len__(self) -> int:
        return len(self.store) if self.order is None else len(self.order)

    def __getitem__(self, i: int):
        if i < 0 or i >= len(self):
            raise IndexError(i)
        item = materialize_item(self.store.item(self._at(i)), self.processor)
        for name, values in self.extra.items():
            if not np.isnan(values[i]):
                setattr(item, name, float(values[i]))
        return item

    def _at(self, i: int) -> int:
        return int(i if self.order is None else self.order[i])

    @property
    def lengths(self) -> np.ndarray:
        """Encoded length of every item (a pair's: the longer side), media tokens included."""
        return self.store.lengths if self.order is None else self.store.lengths[self.order]

    def annotate(self, i: int, **values: float) -> None:
        """Set fields of item ``i`` that are computed after encoding (``ref_chosen_logps`` ...)."""
        for name, value in values.items():
            if name not in self.extra:
                self.extra[name] = np.full(len(self), np.nan)
            self.extra[name][i] = value

    def fingerprint(self) -> str:
        """What a resumed run checks its data against: the encoding's key and the items taken, in order."""
        h = hashlib.sha256(self.key.encode())
        if self.order is not None:
            h.update(np.ascontiguousarray(self.order, dtype=np.int64).tobytes())
        return h.hexdigest()
