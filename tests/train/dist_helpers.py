"""Launching test jobs under torchrun (2 CPU processes, gloo) and comparing their weights with one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

CHILD = Path(__file__).with_name("dist_child.py")
SRC = Path(__file__).resolve().parents[2] / "src"
TOLERANCE = 1e-4  # max |difference| of final fp32 weights between a distributed run and one process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **extra}
    for var in ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "RANK",
                "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        if var not in extra:
            env.pop(var, None)
    return env


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *args]


def launch_runs(root: Path, runs: list[dict], timeout: int = 600, nproc: int = 2) -> subprocess.CompletedProcess:
    """Run ``runs`` (dist_child.py specs) one after the other in one torchrun job; the job's output."""
    spec = root / f"spec-{runs[0]['name']}.json"
    spec.write_text(json.dumps({"out": str(root), "runs": runs}))
    return subprocess.run(torchrun(str(CHILD), str(spec), nproc=nproc), capture_output=True, text=True,
                          timeout=timeout, env=child_env(), cwd=root)


def final_weights(out: Path, name: str = "checkpoint-final") -> dict[str, torch.Tensor]:
    """The trained tensors of a checkpoint: the adapter file (with modules_to_save) or the full model."""
    folder = Path(out) / name
    for file in ("adapter_model.safetensors", "model.safetensors"):
        if (folder / file).is_file():
            return load_file(folder / file)
    shipped = sorted(folder.glob("*/adapter_model.safetensors"))  # dummy: one folder per shipped adapter
    if shipped:
        return {f"{f.parent.name}/{k}": v for f in shipped for k, v in load_file(f).items()}
    raise AssertionError(f"{folder} holds no weights: {sorted(p.name for p in folder.iterdir())}")


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:10]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def run_report(root: Path, name: str) -> dict:
    return json.loads((root / f"{name}.json").read_text())


def zero3_config(folder: Path) -> Path:
    """A DeepSpeed ZeRO-3 JSON file that partitions every parameter: the preset keeps parameters under 100k
    elements whole on every rank (DeepSpeed's persistence threshold), which is all of a tiny model's."""
    path = Path(folder) / "ds_zero3.json"
    path.write_text(json.dumps({
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                              "stage3_gather_16bit_weights_on_model_save": True},
        "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
        "train_batch_size": "auto", "bf16": {"enabled": "auto"}, "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False}))
    return path
