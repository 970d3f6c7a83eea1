"""Fold adapters into the base and write a model folder that plain transformers (and vLLM) load."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError


def merge_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model with every active adapter folded in, in place (no second copy of the weights).

    peft restores modules trained fully next to the adapter (``modules_to_save``: a vision tower, an aligner, a
    resized embedding, a reward head) as the module itself, so they are written like any other weight.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    if not hasattr(model, "merge_and_unload"):
        raise ConfigError(f"adapter type {model.peft_type} cannot be merged into the base by peft")
    # safe_merge: refuse (instead of writing) a merge that produces NaN/inf weights.
    return model.merge_and_unload(progressbar=True, safe_merge=True)


def write_model(model: torch.nn.Module, processor, folder: Path) -> None:
    """Weights (safetensors), config, generation config, processor and chat template into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    write_processor(processor, folder)


def write_processor(processor, folder: Path) -> None:
    """The processor as used in training: its chat template is the family's patch where the family has one."""
    processor.save_pretrained(str(folder))
