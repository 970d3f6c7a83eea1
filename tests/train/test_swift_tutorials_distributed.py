"""Phi-4-multimodal's DeepSpeed tutorial command (/work/shared/tutorials.md, tutorial 1), `swift` replaced by
`tailorkit`, on the tiny model on CPU: `--deepspeed zero2` (DeepSpeed on CPU through the Trainer). It checks what
the tutorial is for: the shipped vision LoRA trains on image rows, the speech LoRA stays as shipped. (The single
process command is in tests/test_swift_tutorials.py, the NPROC_PER_NODE=2 one in test_distributed_runs.py.)

The tutorial prints the command without --dataset and --output_dir (it shows the flags that change); the test
adds those two and otherwise runs it as printed. It sets no --torch_dtype, so the run is in float32 and a shipped
adapter that did not train is bit-for-bit the one in the model folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dist_helpers import child_env


def _dataset(tmp_path: Path) -> Path:
    Image.new("RGB", (28, 28), (255, 0, 0)).save(tmp_path / "red.png")
    rows = [{"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "red"}],
             "images": ["red.png"]}] * 4
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(rows))
    return path


def _run(args: list[str], tmp_path: Path) -> Path:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tailorkit", "sft", *args, "--dataset", str(_dataset(tmp_path)),
               "--output_dir", str(out), "--num_train_epochs", "1"]
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "engine deepspeed zero2" in done.stdout  # DeepSpeed ran it, as a world of one process
    return out / "checkpoint-final"


def _adapters_trained_as_routed(model_dir: Path, final: Path) -> None:
    """Image rows: the vision adapter took gradient steps; the speech adapter took none.

    ZeRO steps its whole flat partition, so AdamW's decoupled weight decay (--weight_decay 0.1, ms-swift's
    default) still shrinks the speech adapter: it must be the shipped one times one common factor, which no
    gradient step would leave.
    """
    import torch
    from safetensors.torch import load_file

    shipped = {f: load_file(model_dir / f / "adapter_model.safetensors") for f in ("vision-lora", "speech-lora")}
    saved = {f: load_file(final / f / "adapter_model.safetensors") for f in shipped}
    assert all(shipped[f].keys() == saved[f].keys() for f in shipped)  # the shipped folders' own key format
    vision = [k for k in shipped["vision-lora"] if not torch.equal(shipped["vision-lora"][k], saved["vision-lora"][k])]
    assert vision, "the vision adapter did not train on image rows"
    before = torch.cat([t.flatten() for t in shipped["speech-lora"].values()])
    after = torch.cat([t.flatten() for t in saved["speech-lora"].values()])
    factor = (after @ before / (before @ before)).item()
    assert 0.999 < factor < 1.0, factor  # a few steps of decay at lr 1e-4
    torch.testing.assert_close(after, before * factor, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_phi4_deepspeed_zero2(family_dirs, tmp_path):
    model_dir = family_dirs("phi4_multimodal")
    final = _run(["--model", str(model_dir), "--train_type", "dummy", "--deepspeed", "zero2"], tmp_path)
    _adapters_trained_as_routed(model_dir, final)
