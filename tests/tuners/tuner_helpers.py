"""Shared helpers of the tuner tests: a tiny run, fixed inputs, logits and parameter comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers import logits, text_inputs, vl_inputs  # noqa: F401  (re-exported for the tuner tests)

from tailorkit.config.train import SftConfig
from tailorkit.config.loading import build_config
from tailorkit.models.family import strip_peft_prefix
from tailorkit.train.sft import sft


def write_vl_data(folder: Path, n: int = 4) -> Path:
    from tailorkit.demo.shapes import write_split

    return write_split(folder, "train", n, seed=0)


def write_text_data(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What colour is shape {i}?"},
                          {"role": "assistant", "content": ["red", "blue", "green", "yellow"][i % 4]}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(model_dir: Path, data: Path, out: Path, steps: int = 2, callbacks=None, **settings):
    """sft for ``steps`` optimizer steps with float32 on CPU; returns the TrainResult."""
    values = dict(model=str(model_dir), dataset=[str(data)], torch_dtype="float32", max_steps=steps,
                  save_strategy="no", logging_steps=1, output_dir=str(out), learning_rate=1e-3, seed=0)
    values.update(settings)
    return sft(build_config(SftConfig, values))


def manifest(out: Path) -> dict:
    data = json.loads((Path(out) / "trainable.json").read_text())
    data["by_component"] = {r["component"]: r for r in data["components"]}
    return data


def plain_params(model) -> dict[str, torch.Tensor]:
    """Base-model parameter name -> value, peft wrappers removed; adapter parameters left out."""
    out = {}
    for name, p in model.named_parameters():
        if ".lora_" in name or ".modules_to_save." in name:
            continue
        out[strip_peft_prefix(name).replace(".original_module.", ".")] = p.detach()
    return out


def changed_components(before: dict, after: dict, family) -> dict[str, set[bool]]:
    """component -> set of 'changed' flags over its base parameters."""
    seen: dict[str, set[bool]] = {}
    for name, value in after.items():
        seen.setdefault(family.component_of(name), set()).add(not torch.equal(before[name], value))
    return seen
