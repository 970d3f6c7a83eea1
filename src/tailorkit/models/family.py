"""What tailorkit knows about one model family: classes, module map, LoRA defaults, tiny build."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    # What the support table shows and the family tests check.
    model_class: str = ""  # transformers (or remote-code) class that auto_class resolves to
    processor_class: str = ""
    lora_targets: tuple[str, ...] = ()  # leaf names of the LLM's linear layers that 'all-linear' covers
    end_of_turn: str = ""  # token closing an assistant reply in the chat template ("" when there is none)
    chat_template: str | None = None  # template patch (data) replacing the native one; None = native
    trust_remote_code: bool = False
    requires: tuple[str, ...] = ()  # optional packages the processor needs
    # Why --packing/--padding_free cannot be exact for this family ("" = packed rows are exact, proven by
    # tests/test_packing_parity.py); a non-empty reason makes them refuse the family before weights load.
    packing_refusal: str = ""
    # Shipped peft adapters that the model's own code switches by modality: (batch input key, adapter name)
    # pairs in priority order; a batch holding none of the keys runs with no adapter (tuners/modality.py).
    adapter_by_input: tuple[tuple[str, str], ...] = ()
    # (module owning get_image_features, a tensor giving device) -> its kwargs for one tiny zero image: the
    # dummy vision pass that keeps every rank's collectives in step (distributed/media.py); None = none.
    dummy_image: Callable | None = field(default=None, compare=False)
    media: tuple[str, ...] = ("image",)  # media kinds the processor takes (multimodal families; tests use the first)
    support: str = "tiny random build: prompt = train prefix, supervised = replies, 1 sft step with an image"

    @property
    def is_multimodal(self) -> bool:
        return bool(self.vision)

    def component_of(self, param_name: str) -> str:
        """The component (vision / aligner / llm / lm_head / other) that owns a parameter."""
        name = strip_peft_prefix(param_name)
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


def chat_template_file(name: str) -> str:
    """A chat template shipped with tailorkit (models/chat_templates/<name>.jinja)."""
    return (Path(__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


def patch_template(template: str, *edits: tuple[str, str]) -> str:
    """``template`` with every occurrence of each ``old`` replaced by ``new``, for ``(old, new)`` in ``edits``.

    A family's template patch is data: a few edits of the native template (kept in its .jinja file), so
    the patch shows exactly what it changes. An edit that no longer applies raises instead of leaving
    the native template in place unnoticed.
    """
    for old, new in edits:
        if old not in template:
            raise ValueError(f"template patch does not apply: {old!r} is not in the template")
        template = template.replace(old, new)
    return template


_PEFT_PREFIX = re.compile(r"^base_model\.model\.")


def strip_peft_prefix(name: str) -> str:
    """A parameter or module name as in the bare model: peft's ``base_model.model.`` and ``.base_layer.`` removed."""
    name = _PEFT_PREFIX.sub("", name)
    return name.replace(".base_layer.", ".")
