"""Registry of model families: users choose by name (--model_type) or it follows the model's config."""

from __future__ import annotations

from ..errors import ModelError
from .family import Family
from .deepseek_vl import DEEPSEEK_VL
from .gemma3 import GEMMA3
from .idefics import IDEFICS3, SMOLVLM
from .internvl import INTERNVL
from .llava import LLAVA, LLAVA_NEXT, LLAVA_ONEVISION
from .minicpmv import MINICPMV
from .monkey import MONKEY
from .phi4mm import PHI4MM
from .qwen2_audio import QWEN2_AUDIO
from .qwen_vl import QWEN2_5_VL, QWEN2_VL, QWEN3_VL
from .text import GEMMA, LLAMA, PHI3, QWEN2, QWEN3

FAMILIES: dict[str, Family] = {f.name: f for f in (
    QWEN2, QWEN3, LLAMA, GEMMA, PHI3,
    QWEN2_VL, QWEN2_5_VL, QWEN3_VL, LLAVA, LLAVA_NEXT, LLAVA_ONEVISION, INTERNVL, IDEFICS3, SMOLVLM, GEMMA3, PHI4MM,
    DEEPSEEK_VL, MINICPMV, MONKEY, QWEN2_AUDIO,
)}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def family_by_name(name: str) -> Family:
    """The family registered under ``name`` (case, '-', '_' and '.' ignored)."""
    for fam in FAMILIES.values():
        if _norm(name) in {_norm(fam.name), *map(_norm, fam.model_types)}:
            return fam
    raise ModelError(f"unknown model_type {name!r}; known families: {', '.join(FAMILIES)}")


def family_for_config(config) -> Family | None:
    """The family whose transformers ``model_type`` matches ``config``, or None."""
    for fam in FAMILIES.values():
        if config.model_type in fam.model_types:
            return fam
    return None
