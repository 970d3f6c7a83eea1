"""Fixtures of the data tests."""

from __future__ import annotations

import pytest
import torch


def _write_png(path, seed: int = 0):
    """A deterministic random-pixel PNG at ``path`` (folders created)."""
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (40, 56, 3), generator=g, dtype=torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="session")
def write_png():
    return _write_png
