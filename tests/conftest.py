"""Shared fixtures: tiny random models built once per test session (no downloads)."""

from __future__ import annotations

import pytest

from tailorkit.models.registry import FAMILIES
from tailorkit.models.tiny import build_qwen2, build_qwen2_5_vl


def pytest_collection_modifyitems(config, items):
    """Every `gpu`-marked test skips, saying so, where no CUDA GPU is visible (scripts/gpu_check.sh runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu_check.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory):
    """Directory of a tiny Qwen2 text model with tokenizer and chat template."""
    path = tmp_path_factory.mktemp("tiny-qwen2")
    build_qwen2(path)
    return path


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory):
    """Directory of a tiny Qwen2.5-VL model with processor and chat template."""
    path = tmp_path_factory.mktemp("tiny-qwen2_5_vl")
    build_qwen2_5_vl(path)
    return path


@pytest.fixture(scope="session")
def tiny_vl_adapters(tiny_vl_dir, tmp_path_factory):
    """Two random LoRA adapters (name -> folder) for the tiny Qwen2.5-VL that answer differently."""
    from helpers import build_random_lora

    root = tmp_path_factory.mktemp("tiny-vl-adapters")
    return {name: build_random_lora(tiny_vl_dir, root / name, seed) for name, seed in (("alpha", 1), ("beta", 2))}


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """Build each registered family's tiny model once, on first use."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = tmp_path_factory.mktemp(f"tiny-{name}")
            FAMILIES[name].build_tiny(built[name])
        return built[name]

    return get
