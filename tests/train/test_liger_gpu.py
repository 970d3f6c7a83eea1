"""--use_liger_kernel on a GPU: Liger's kernels are applied (the logits are never materialised in training) and the
training losses match the same run without them. Skipped without CUDA; scripts/gpu_check.sh runs it."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from helpers import text_chat_rows, write_jsonl
from tailorkit.cli import parse
from tailorkit.train.sft import sft

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel")]

LOSS_RTOL = 0.02  # bf16 training, fused vs stock kernels, per logged loss


@pytest.mark.parametrize("kind", ["text", "qwen2_5_vl"])
def test_liger_losses_match_stock_kernels(tiny_text_dir, tiny_vl_dir, tmp_path, kind):
    model_dir = tiny_text_dir if kind == "text" else tiny_vl_dir
    data = write_jsonl(tmp_path / "data.jsonl", text_chat_rows(16))
    runs = {}
    # Liger patches the modeling modules' functions for the whole process: the stock run goes first.
    for liger in ("false", "true"):
        out = tmp_path / f"liger-{liger}"
        result = sft(parse("sft", ["--model", str(model_dir), "--dataset", str(data), "--output_dir", str(out),
                                   "--torch_dtype", "bfloat16", "--train_type", "full", "--max_steps", "6",
                                   "--per_device_train_batch_size", "4", "--logging_steps", "1", "--seed", "3",
                                   "--learning_rate", "1e-4", "--save_strategy", "no", "--use_liger_kernel", liger]))
        runs[liger] = ([h["loss"] for h in result.log_history if "loss" in h], result.model)
    (stock, _), (fused, model) = runs["false"], runs["true"]
    assert len(stock) == len(fused) == 6
    assert all(abs(a - b) <= LOSS_RTOL * abs(a) for a, b in zip(stock, fused)), (stock, fused)
    model.train()
    ids = torch.randint(3, 100, (1, 16), device=model.device)
    out = model(input_ids=ids, labels=ids)
    assert out.logits is None and torch.isfinite(out.loss)  # Liger's fused linear cross-entropy ran
