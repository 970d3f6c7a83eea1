"""Encoded samples on disk: token ids and labels as int32 arrays, memory-mapped when read.

A store holds *units* (indexed ``Encoded`` samples: ids, labels, and the ``Pending`` media a batch loads)
and *items* (what the trainer iterates: a unit itself, or a pair / KTO sample / rollout prompt made of
units). Ids and labels of all units are two flat int32 files; per unit an offset and a pickled
``Pending`` (only where media are loaded per batch); per item its units, its length and, for items that
are not plain samples, the item with its units left out (pickled). Nothing grows in memory per row while
writing or reading but these offsets.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import weakref
from array import array
from pathlib import Path

import numpy as np

from .encode import Encoded

FORMAT = 1  # bump when the files below change meaning


class _Blobs:
    """Byte strings appended to one file, with their offsets."""

    def __init__(self, path: Path):
        self.file, self.offsets = open(path, "wb"), array("q", [0])  # noqa: SIM115 - closed by close()

    def add(self, data: bytes) -> None:
        self.file.write(data)
        self.offsets.append(self.offsets[-1] + len(data))

    def close(self, offsets_path: Path) -> None:
        self.file.close()
        np.save(offsets_path, np.frombuffer(self.offsets, dtype=np.int64))


class StoreWriter:
    """Writes a store into ``folder`` item by item; ``close`` finishes it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ids, self.labels = open(self.folder / "ids.bin", "wb"), open(self.folder / "labels.bin", "wb")  # noqa: SIM115
        self.unit_offsets = array("q", [0])
        self.pending = _Blobs(self.folder / "pending.bin")
        self.skeletons = _Blobs(self.folder / "skeletons.bin")
        self.item_units, self.lengths = array("q"), array("i")

    def add(self, item) -> None:
        """Append one encoded item (an ``Encoded`` or a dataclass whose ``Encoded`` fields are its units)."""
        names = [] if isinstance(item, Encoded) else [f.name for f in dataclasses.fields(item)
                                                      if isinstance(getattr(item, f.name), Encoded)]
        units = [item] if isinstance(item, Encoded) else [getattr(item, n) for n in names]
        for unit in units:
            self.item_units.append(len(self.unit_offsets) - 1)
            self._add_unit(unit)
        self.lengths.append(len(item))
        self.skeletons.add(b"" if not names else pickle.dumps(
            (dataclasses.replace(item, **{n: None for n in names}), names), protocol=pickle.HIGHEST_PROTOCOL))

    def _add_unit(self, enc: Encoded) -> None:
        self.ids.write(np.asarray(enc.input_ids, dtype=np.int32).tobytes())
        self.labels.write(np.asarray(enc.labels, dtype=np.int32).tobytes())
        self.unit_offsets.append(self.unit_offsets[-1] + len(enc.input_ids))
        self.pending.add(b"" if enc.pending is None else pickle.dumps(enc.pending, protocol=pickle.HIGHEST_PROTOCOL))

    def close(self, meta: dict) -> None:
        """Finish the files and write ``meta`` (JSON) next to them."""
        self.ids.close()
        self.labels.close()
        f = self.folder
        np.save(f / "units.npy", np.frombuffer(self.unit_offsets, dtype=np.int64))
        self.pending.close(f / "pending.npy")
        self.skeletons.close(f / "skeletons.npy")
        np.save(f / "items.npy", np.frombuffer(self.item_units, dtype=np.int64).reshape(len(self.lengths), -1)
                if self.lengths else np.zeros((0, 1), dtype=np.int64))
        np.save(f / "lengths.npy", np.frombuffer(self.lengths, dtype=np.int32))
        (f / "meta.json").write_text(json.dumps({"format": FORMAT, **meta}))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _memmap(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np.int32)
    return np.memmap(path, dtype=np.int32, mode="r")


class Store:
    """A store written by ``StoreWriter``, read lazily: arrays memory-mapped, one item unpickled at a time."""

    def __init__(self, folder: Path):
        f = self.folder = Path(folder)
        self.meta = json.loads((f / "meta.json").read_text())
        self.ids, self.labels = _memmap(f / "ids.bin"), _memmap(f / "labels.bin")
        load = lambda name: np.load(f / name, mmap_mode="r")  # noqa: E731
        self.unit_offsets, self.items, self.lengths = load("units.npy"), load("items.npy"), load("lengths.npy")
        self.pending_offsets, self.skeleton_offsets = load("pending.npy"), load("skeletons.npy")
        # Open now: a running store keeps reading its files even if another run replaces the cache entry.
        self._files = {name: os.open(f / name, os.O_RDONLY) for name in ("pending.bin", "skeletons.bin")}
        weakref.finalize(self, _close_all, list(self._files.values()))

    def __len__(self) -> int:
        return len(self.lengths)

    def unit(self, u: int) -> Encoded:
        """Unit ``u`` as ``encode.index`` made it (media not loaded)."""
        a, b = int(self.unit_offsets[u]), int(self.unit_offsets[u + 1])
        blob = self._blob("pending.bin", self.pending_offsets, u)
        return Encoded(input_ids=self.ids[a:b].tolist(), labels=self.labels[a:b].tolist(),
                       pending=pickle.loads(blob) if blob else None)

    def item(self, i: int):
        """Item ``i`` with its units as ``unit`` gives them."""
        units = [self.unit(int(u)) for u in self.items[i]]
        blob = self._blob("skeletons.bin", self.skeleton_offsets, i)
        if not blob:
            return units[0]
        skeleton, names = pickle.loads(blob)
        return dataclasses.replace(skeleton, **dict(zip(names, units)))

    def _blob(self, name: str, offsets: np.ndarray, k: int) -> bytes:
        a, b = int(offsets[k]), int(offsets[k + 1])
        if a == b:
            return b""
        return os.pread(self._files[name], b - a, a)  # no shared file position: safe in forked workers

    def __getstate__(self):  # a spawned data loader worker maps the files itself
        return {"folder": self.folder}

    def __setstate__(self, state):
        self.__init__(state["folder"])
