"""DeepSpeed ZeRO-2 and ZeRO-3 on one GPU: `--deepspeed zero2|zero3` trains (torchrun, one process) and saves a
checkpoint that plain transformers loads. Skipped without CUDA or deepspeed; scripts/gpu_check.sh runs it.
DeepSpeed on CPU, several processes and resume are the distributed issue's."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import free_port, text_chat_rows, write_jsonl

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")]


@pytest.mark.parametrize("preset", ["zero2", "zero3"])
def test_deepspeed_preset_trains_and_saves_on_one_gpu(tiny_text_dir, tmp_path, preset):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "data.jsonl", text_chat_rows(8))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "tailorkit", "sft", "--model", str(tiny_text_dir),
           "--dataset", str(data), "--train_type", "full", "--torch_dtype", "bfloat16", "--deepspeed", preset,
           "--per_device_train_batch_size", "2", "--max_steps", "3", "--save_steps", "2", "--logging_steps", "1",
           "--learning_rate", "1e-2", "--output_dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ), cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    logs = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3]
    assert any(p.name.startswith("global_step") for p in (out / "checkpoint-2").iterdir())  # DeepSpeed's states
    # DeepSpeed trains bf16 copies of the weights (its fp32 masters aside): an untrained weight saves as bf16(base)
    trained = AutoModelForCausalLM.from_pretrained(out / "checkpoint-final", dtype=torch.bfloat16)
    base = AutoModelForCausalLM.from_pretrained(tiny_text_dir, dtype=torch.bfloat16)
    names = [n for n, _ in base.named_parameters()]
    moved = [n for (n, p), q in zip(trained.named_parameters(), base.parameters()) if not torch.equal(p, q)]
    assert moved == names  # a whole (gathered under ZeRO-3), trained model was saved
