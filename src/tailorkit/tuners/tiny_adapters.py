"""A tiny vision-language model that ships its own LoRA adapters, the way Phi-4-multimodal does.

Phi-4-multimodal's checkpoint carries ``vision-lora/`` and ``speech-lora/`` peft adapters that are part
of the model; a fresh LoRA on top of them conflicts, and the right plan is ``--train_type dummy``. This
builds the same layout from the tiny Qwen2.5-VL (building the tiny Phi-4-multimodal is slower and adds
nothing to what the plan sees): base weights in ``out/`` and a peft adapter with non-zero weights in
``out/vision-lora/``, loaded with ``--adapters out/vision-lora``.
"""

from __future__ import annotations

from pathlib import Path

import torch

SHIPPED_ADAPTER = "vision-lora"


def build_qwen2_5_vl_with_adapters(out: str | Path) -> Path:
    """Write the tiny Qwen2.5-VL to ``out`` and its shipped adapter to ``out/vision-lora``; returns the latter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from ..models.tiny import build_qwen2_5_vl

    out = Path(out)
    build_qwen2_5_vl(out)
    model = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*\.(qkv|q_proj|v_proj)$", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(out / SHIPPED_ADAPTER))
    return out / SHIPPED_ADAPTER
