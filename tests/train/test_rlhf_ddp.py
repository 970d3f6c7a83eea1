"""Two CPU processes (torchrun, gloo) run DPO with gradient checkpointing and LoRA to the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import free_port


@pytest.mark.slow
def test_torchrun_two_process_dpo_gradient_checkpointing_lora(tiny_text_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Is the {w} fine?"}, {"role": "assistant", "content": "yes"}],
             "rejected_response": "no the dog"} for w in ["red", "green", "blue", "cat", "dog", "star", "fox", "story"]]
    data = tmp_path / "pref.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "tailorkit", "rlhf", "--rlhf_type", "dpo",
           "--model", str(tiny_text_dir), "--dataset", str(data), "--train_type", "lora", "--torch_dtype", "float32",
           "--gradient_checkpointing", "true", "--per_device_train_batch_size", "2", "--max_steps", "3",
           "--logging_steps", "1", "--save_strategy", "no", "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert "mark a variable ready only once" not in text
    assert proc.returncode == 0, text[-4000:]
    assert text.count("[tailorkit] world size 2") >= 1, text[-4000:]
    logs = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3]
    assert (out / "checkpoint-final" / "adapter_model.safetensors").is_file()
    assert (out / "checkpoint-final" / "args.yaml").is_file()
