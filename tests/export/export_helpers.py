"""Shared helpers of the export tests: running the verb, fixed inputs, logits, adapters with known weights."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import logits, text_inputs, vl_inputs  # noqa: F401  (re-exported for the export tests)

from tailorkit.config.export import ExportConfig
from tailorkit.config.loading import build_config
from tailorkit.export.run import export


def run_export(out: Path, **settings):
    """`tailorkit export` as the CLI calls it, float32 on the CPU."""
    values = dict(output_dir=str(out), torch_dtype="float32", merge_lora=True)
    values.update(settings)
    return export(build_config(ExportConfig, values))


def random_adapter(model, out: Path, seed: int, **lora) -> Path:
    """Save a peft adapter of ``model`` with random (non-zero) weights everywhere, including modules_to_save."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, **lora)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".modules_to_save." in name:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(str(out))
    return Path(out)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out
