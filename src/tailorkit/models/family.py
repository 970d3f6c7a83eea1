"""What tailorkit knows about one model family: classes, module map, LoRA defaults, tiny build."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

COMPONENTS = ("vision", "aligner", "llm", "lm_head", "other")


@dataclass(frozen=True)
class Family:
    """One model family.

    Module prefixes are dotted parameter-name prefixes of the model as loaded by ``auto_class``.
    A parameter belongs to the first component whose prefix matches, checked in the order
    aligner, vision, llm, lm_head (the aligner usually lives inside the vision tower).
    """

    name: str
    model_types: tuple[str, ...]
    auto_class: str  # name of a transformers Auto class
    llm: tuple[str, ...]
    lm_head: tuple[str, ...] = ("lm_head",)
    vision: tuple[str, ...] = ()
    aligner: tuple[str, ...] = ()
    build_tiny: Callable[[str], None] | None = field(default=None, compare=False)
    notes: str = ""

    @property
    def is_multimodal(self) -> bool:
        return bool(self.vision)

    def component_of(self, param_name: str) -> str:
        """The component (vision / aligner / llm / lm_head / other) that owns a parameter."""
        name = _strip_peft(param_name)
        for comp in ("aligner", "vision", "llm", "lm_head"):
            for prefix in getattr(self, comp):
                if name == prefix or name.startswith(prefix + "."):
                    return comp
        return "other"

    def linear_leaf_names(self, model: nn.Module, components: tuple[str, ...]) -> list[str]:
        """Full names of the nn.Linear modules inside the given components (lm_head excluded)."""
        names = []
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and self.component_of(name) in components and name not in self.lm_head:
                names.append(name)
        return names


_PEFT_PREFIX = re.compile(r"^base_model\.model\.")


def _strip_peft(name: str) -> str:
    name = _PEFT_PREFIX.sub("", name)
    return name.replace(".base_layer.", ".")
