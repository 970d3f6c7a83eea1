"""GPU halves of export: vLLM loads a merged and a GPTQ export; FP8 export (transformers writes FP8 on a GPU)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from export_helpers import run_export

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")


def _vllm_greedy(folder, prompt: str) -> str:
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(folder), gpu_memory_utilization=0.3, max_model_len=512, enforce_eager=True)
    out = llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0.0))
    return out[0].outputs[0].text


@needs_vllm
def test_vllm_loads_a_merged_export(tiny_text_dir, tmp_path):
    from export_helpers import random_adapter
    from helpers import TEXT_PROMPT
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = random_adapter(AutoModelForCausalLM.from_pretrained(tiny_text_dir), tmp_path / "lora", seed=1,
                             target_modules=["q_proj", "v_proj"])
    out = tmp_path / "merged"
    run_export(out, model=str(tiny_text_dir), adapters=[str(adapter)])
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    ids = tok([TEXT_PROMPT], return_tensors="pt")
    want = tok.decode(model.generate(**ids, max_new_tokens=8, do_sample=False)[0, ids["input_ids"].shape[1]:],
                      skip_special_tokens=True)
    assert _vllm_greedy(out, TEXT_PROMPT) == want


@needs_vllm
def test_vllm_loads_a_gptq_export(tiny_vl_quant_dir, shapes_rows, tmp_path):
    out = tmp_path / "gptq"
    run_export(out, model=str(tiny_vl_quant_dir), quant_method="gptq", group_size=32, dataset=[str(shapes_rows)],
               verify_n_samples=2)
    assert isinstance(_vllm_greedy(out, "<|im_start|>user\nWhat colour is the sky?<|im_end|>\n"), str)


def test_fp8_export_reloads(tiny_vl_quant_dir, shapes_rows, tmp_path):
    out = tmp_path / "fp8"
    result = run_export(out, model=str(tiny_vl_quant_dir), quant_method="fp8", group_size=32,
                        dataset=[str(shapes_rows)], verify_n_samples=2)
    assert result.report["quantization"]["nll_increase"] < 0.05
    from export_helpers import tensors

    assert any(t.dtype == torch.float8_e4m3fn for t in tensors(out).values())
