"""Content digests of training data: encoded samples (resume checks) and raw rows of a stream (its position)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import torch


def data_fingerprint(samples) -> str:
    """sha256 over the encoded training items (token ids, labels, media tensors; pairs and prompts too), in order."""
    h = hashlib.sha256()
    for s in samples:
        feed(h, s)
    return h.hexdigest()


def feed(h, x) -> None:
    """Add ``x`` to the hash ``h`` by content: tensor bytes, dataclass fields, image pixels, JSON otherwise."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous().flatten()
        h.update(str(t.dtype).encode() + t.view(torch.uint8).numpy().tobytes())
    elif dataclasses.is_dataclass(x):  # Encoded, preference pairs, KTO samples, rollout prompts
        for f in dataclasses.fields(x):
            h.update(f.name.encode())
            feed(h, getattr(x, f.name))
    elif hasattr(x, "tobytes") and hasattr(x, "mode"):  # a PIL image: its pixels, not its repr
        h.update(x.tobytes())
    elif isinstance(x, dict):
        for key in sorted(x):
            h.update(str(key).encode())
            feed(h, x[key])
    else:
        h.update(json.dumps(x, sort_keys=True, default=str).encode())


# Where a row came from is not its content: a moved or renamed file with the same rows resumes.
_NOT_CONTENT = frozenset({"source", "line", "base_dir"})


def feed_row(h, item) -> None:
    """Add one parsed row (a Conversation or TextSample) to ``h``, leaving out where it came from."""
    for f in dataclasses.fields(item):
        if f.name not in _NOT_CONTENT:
            h.update(f.name.encode())
            feed(h, getattr(item, f.name))
