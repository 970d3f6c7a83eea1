"""QLoRA on a GPU: the base weights load as NF4 with double quantization, and a training step's peak memory is
measured against bf16 LoRA on the same model. Skipped without CUDA; scripts/gpu_check.sh runs it."""

from __future__ import annotations

import gc
import importlib.util

import pytest
import torch
from transformers import TrainerCallback

from helpers import text_chat_rows, write_jsonl
from tailorkit.cli import parse
from tailorkit.models.tiny import build_qwen2
from tailorkit.train.sft import sft

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")]

# ~95M parameters in the decoder layers: the weights, not the activations, decide the peak.
MID_SIZE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                num_key_value_heads=4)


class PeakMemory(TrainerCallback):
    """Peak CUDA memory allocated while training (loading excluded)."""

    def on_train_begin(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated()


def test_qlora_nf4_double_quant_peak_memory_against_bf16_lora(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("mid-qwen2")
    build_qwen2(model_dir, **MID_SIZE)
    data = write_jsonl(model_dir.parent / "mid-data.jsonl", text_chat_rows(8))
    peaks = {}
    for train_type in ("lora", "qlora"):
        meter = PeakMemory()
        result = sft(parse("sft", ["--model", str(model_dir), "--dataset", str(data), "--train_type", train_type,
                                   "--torch_dtype", "bfloat16", "--max_steps", "2", "--save_strategy", "no",
                                   "--output_dir", str(model_dir.parent / f"out-{train_type}")]), callbacks=[meter])
        peaks[train_type] = meter.peak
        if train_type == "qlora":
            states = [p.quant_state for p in result.model.parameters() if hasattr(p, "quant_state")]
            assert len(states) == 7 * MID_SIZE["num_hidden_layers"]  # q k v o gate up down, lm_head unquantized
            assert all(s.quant_type == "nf4" and s.nested for s in states)  # nested = double quantization
        del result
        gc.collect()
        torch.cuda.empty_cache()
    print(f"peak memory of a training step: lora bf16 {peaks['lora'] / 2**20:.1f} MiB, "
          f"qlora nf4+double quant {peaks['qlora'] / 2**20:.1f} MiB ({peaks['qlora'] / peaks['lora']:.2f}x)")
    assert peaks["qlora"] < 0.5 * peaks["lora"]
