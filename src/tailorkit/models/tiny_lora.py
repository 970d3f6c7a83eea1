"""Random (non-zero) LoRA adapters for tiny models, so that tests can tell adapters apart by their answers."""

from __future__ import annotations

from pathlib import Path

import torch


def build_random_lora(model_dir: str | Path, out: str | Path, seed: int, rank: int = 4) -> Path:
    """Save a peft LoRA adapter on the LLM attention of ``model_dir`` with random A and B (seeded)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    multimodal = hasattr(AutoConfig.from_pretrained(model_dir), "vision_config")
    auto = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=16 * rank, target_modules=["q_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return Path(out)
