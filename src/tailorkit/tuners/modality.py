"""Shipped adapters switched by modality, as Phi-4-multimodal's own code switches them.

Phi-4-multimodal ships ``vision-lora/`` and ``speech-lora/`` and activates one per forward pass by what
the input holds: images (with or without audio) the vision adapter, audio alone the speech adapter, text
neither. Training them (``--train_type dummy``) must route each batch the same way, or the speech adapter
learns from images and both learn from text. A family declares the routing as ``adapter_by_input``.

The batch picks the adapter, as in the model's code: keep modalities in separate batches (batch size 1,
or data sorted by modality) to route every row by its own modality.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.family import Family


def shipped_adapter_dirs(model_dir: str | None) -> list[str]:
    """Peft adapter folders directly inside a model directory (Phi-4-multimodal's vision-lora/, speech-lora/)."""
    if not model_dir or not Path(model_dir).is_dir():
        return []
    return sorted(str(p.parent) for p in Path(model_dir).glob("*/adapter_config.json"))


class AdapterRouter:
    """Activates the adapter a batch's inputs call for; the others are off for that forward pass.

    peft's switching also flips ``requires_grad`` of the adapters it turns off; the plan's trainability is
    restored after every switch, so inactive adapters simply get no gradient (and the optimizer skips them).
    """

    def __init__(self, model: torch.nn.Module, family: Family):
        loaded = set(_loaded_adapters(model))
        self.model = model
        self.routes = [(key, name) for key, name in family.adapter_by_input if name in loaded]
        self.trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        self.active: str | None = None

    def __call__(self, inputs: dict) -> str | None:
        """Switch to the batch's adapter; returns its name, or None when the batch runs with no adapter."""
        name = next((n for key, n in self.routes if inputs.get(key) is not None), None)
        if name is not None:
            self.model.enable_adapters()
            self.model.set_adapter(name)
        else:
            self.model.disable_adapters()
        for pname, p in self.model.named_parameters():
            p.requires_grad_(self.trainable.get(pname, p.requires_grad))
        self.active = name
        return name


def adapter_router(model: torch.nn.Module, family: Family) -> AdapterRouter | None:
    """A router when the family switches shipped adapters by modality and at least one of them is loaded."""
    if not family.adapter_by_input or not _loaded_adapters(model):
        return None
    router = AdapterRouter(model, family)
    return router if router.routes else None


def _loaded_adapters(model: torch.nn.Module) -> list[str]:
    config = getattr(model, "peft_config", None)
    return list(config) if isinstance(config, dict) else []
