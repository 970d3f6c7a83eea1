"""Mixed precision on a GPU: fp16 (grad scaler, fp32 master weights) and bf16 training, and an exact resume that
restores the grad scaler's state. Skipped without CUDA; scripts/gpu_check.sh runs it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tailorkit.cli import parse
from tailorkit.train.sft import sft
from test_resume import run_child, train_args, write_data

pytestmark = pytest.mark.gpu

WEIGHTS = {"full": "model.safetensors", "lora": "adapter_model.safetensors"}


@pytest.mark.parametrize("dtype,train_type", [("float16", "full"), ("bfloat16", "lora")])
def test_mixed_precision_trains_and_resumes_exactly_with_the_scaler_state(tiny_text_dir, tmp_path, dtype,
                                                                          train_type):
    data = write_data(tmp_path / "data.jsonl")
    common = ["--torch_dtype", dtype, "--train_type", train_type, "--learning_rate", "1e-4"]
    ref_out, run_out = tmp_path / "ref", tmp_path / "run"
    ref = sft(parse("sft", [*train_args(tiny_text_dir, data, ref_out), *common]))
    losses = [h["loss"] for h in ref.log_history if "loss" in h]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    if train_type == "full":  # fp32 master weights under autocast (and the scaler for fp16)
        assert {p.dtype for p in ref.model.parameters() if p.requires_grad} == {torch.float32}
    scaler_file = ref_out / "checkpoint-8" / "scaler.pt"
    assert scaler_file.is_file() == (dtype == "float16")  # fp16 only: bf16 needs no loss scaling

    args = [*train_args(tiny_text_dir, data, run_out), *common]
    r = run_child("sigterm_at_step", 3, args)  # stop after step 3's checkpoint: its scaler has counted 3 steps
    assert r.returncode == 2, r.stderr[-3000:]
    resumed = sft(parse("sft", [*args, "--resume_from_checkpoint", "last"]))
    expected, got = load_file(ref.final_dir / WEIGHTS[train_type]), load_file(resumed.final_dir / WEIGHTS[train_type])
    assert expected.keys() == got.keys()
    assert max((expected[k].float() - got[k].float()).abs().max().item() for k in expected) <= 1e-5
    if dtype == "float16":
        a, b = torch.load(scaler_file), torch.load(run_out / "checkpoint-8" / "scaler.pt")
        # a scaler restarted from scratch would have counted only the 5 steps after the resume
        assert a == b and a["_growth_tracker"] == b["_growth_tracker"] >= 1, (a, b)
