"""FSDP2 through accelerate on GPUs (skipped without 2 CUDA devices); the CPU half is test_distributed_parity.py."""

from __future__ import annotations

import pytest
import torch

from tailorkit.cli import parse
from tailorkit.train.sft import sft

from dist_helpers import TOLERANCE, final_weights, launch_runs, max_diff, run_report
from helpers import text_chat_rows, write_jsonl

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")]


def _args(model, data, out, per_device: int, *extra: str) -> list[str]:
    return ["--model", str(model), "--dataset", str(data), "--output_dir", str(out), "--train_type", "full",
            "--torch_dtype", "float32", "--max_steps", "2", "--per_device_train_batch_size", str(per_device),
            "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--save_strategy", "no", "--seed", "3",
            *extra]


def test_fsdp2_through_accelerate_on_gpus_equals_one_process(tiny_text_dir, tmp_path):
    data = write_jsonl(tmp_path / "text.jsonl", text_chat_rows(16))
    proc = launch_runs(tmp_path, [{"name": "fsdp_gpu", "argv": _args(tiny_text_dir, data, tmp_path / "fsdp", 1,
                                                                     "--fsdp", "full_shard")}])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert set(run_report(tmp_path, "fsdp_gpu")["param_classes"]) == {"DTensor"}
    sft(parse("sft", _args(tiny_text_dir, data, tmp_path / "one", 2)))
    assert max_diff(final_weights(tmp_path / "fsdp"), final_weights(tmp_path / "one")) <= TOLERANCE
