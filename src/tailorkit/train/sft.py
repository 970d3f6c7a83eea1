"""`tailorkit sft` and `tailorkit pt`: the recipe (train/recipe.py) on conversations or raw text."""

from __future__ import annotations

from ..config.train import SftConfig
from .recipe import TrainResult, fit, prepare


def sft(cfg: SftConfig, callbacks: list | None = None) -> TrainResult:
    """Supervised fine-tuning on conversations; loss on assistant replies only (``SftAlgorithm``).

    ``callbacks``: extra ``transformers.TrainerCallback`` objects (Python API only).
    """
    return fit(prepare(cfg, "sft", callbacks))


def pt(cfg: SftConfig, callbacks: list | None = None) -> TrainResult:
    """Continued pre-training on {"text": ...} rows; loss on every token (``SftAlgorithm``)."""
    return fit(prepare(cfg, "pt", callbacks))
