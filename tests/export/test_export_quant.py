"""Merge + quantize in one command (GPTQ, AWQ, bitsandbytes 4-bit) of a tiny Qwen2.5-VL with a LoRA adapter."""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import run_export, tensors
from transformers import AutoModelForImageTextToText

from tailorkit.errors import ConfigError

pytestmark = pytest.mark.slow

# Stated bound: on the held-out rows the 4-bit export's mean NLL per supervised token stays within this of fp32
# (measured on this tiny model: gptq +0.001, awq +0.003, bnb +0.005 nats).
NLL_BOUND = 0.05
QUANT_CLASS = {"gptq": "gptq", "awq": "awq", "bnb": "bitsandbytes"}


@pytest.fixture(scope="module")
def vl_adapter(tiny_vl_quant_dir, tmp_path_factory):
    from tailorkit.testing import build_random_lora

    return build_random_lora(tiny_vl_quant_dir, tmp_path_factory.mktemp("vl-quant-lora") / "lora", seed=1)


@pytest.mark.parametrize("method", ["gptq", "awq", "bnb"])
def test_merge_and_quantize_in_one_command(method, tiny_vl_quant_dir, vl_adapter, shapes_rows, tmp_path,
                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / method
    result = run_export(out, model=str(tiny_vl_quant_dir), adapters=[str(vl_adapter)], quant_method=method,
                        quant_bits=4, group_size=32, dataset=[str(shapes_rows)], verify_n_samples=2)
    report = result.report
    assert report["merge"]["max_abs_logit_diff"] <= 1e-4  # the merge is verified before quantizing
    q = report["quantization"]
    assert q["rows"] == 2
    if method != "bnb":  # calibrated on the rows before the held-out ones, with their images
        assert q["calibration_rows"] == q["calibration_rows_with_media"] == 4
    assert 0 < q["max_abs_logit_diff"]  # really quantized: not the fp32 model
    assert abs(q["nll_increase"]) <= NLL_BOUND
    assert q["size_bytes"] < q["size_bytes_unquantized"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [method]  # nothing left in the working directory
    # Reloads with plain from_pretrained; config.json says how it is quantized.
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == QUANT_CLASS[method]
    model = AutoModelForImageTextToText.from_pretrained(str(out))
    _check_packed(method, tensors(out), model)
    _check_vision_untouched(tiny_vl_quant_dir, out, model)
    # Unquantized parts keep the source float32, except AWQ, whose CPU kernel runs in bfloat16.
    assert next(model.model.visual.parameters()).dtype == (torch.bfloat16 if method == "awq" else torch.float32)


def _check_packed(method, weights, model):
    """The language model's linear weights are stored as packed integers, and run as such."""
    name = next(k for k in weights if "layers.0.self_attn.q_proj" in k and not k.startswith("visual"))
    prefix = name[: name.index("q_proj") + len("q_proj")]
    layer = model.model.language_model.layers[0].self_attn.q_proj
    if method == "bnb":
        assert weights[f"{prefix}.weight"].dtype == torch.uint8
        assert f"{prefix}.weight.quant_state.bitsandbytes__nf4" in weights
        assert type(layer).__name__ == "Linear4bit"
    else:
        assert weights[f"{prefix}.qweight"].dtype == torch.int32 and f"{prefix}.weight" not in weights
        assert weights[f"{prefix}.qweight"].numel() * 8 == layer.in_features * layer.out_features  # 8 x 4-bit/int32
        assert not isinstance(layer, torch.nn.Linear)
    assert weights["lm_head.weight"].is_floating_point()


def _check_vision_untouched(base_dir, out, model):
    """The vision tower (and aligner) are plain float weights equal to the base's (cast to the export's dtype)."""
    base = AutoModelForImageTextToText.from_pretrained(str(base_dir), dtype=torch.float32)
    got = dict(model.model.visual.named_parameters())
    for name, p in base.model.visual.named_parameters():
        assert torch.equal(got[name], p.to(got[name].dtype)), name
    assert all(type(m) is torch.nn.Linear for m in model.model.visual.modules() if "Linear" in type(m).__name__)


def test_fp8_needs_a_gpu(tiny_vl_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fp8 is tested in test_export_gpu.py")
    with pytest.raises(ConfigError, match="fp8 needs a CUDA GPU"):
        run_export(tmp_path / "fp8", model=str(tiny_vl_dir), quant_method="fp8")
    assert not (tmp_path / "fp8").exists()


def test_awq_refuses_layers_it_cannot_quantize_before_writing(tiny_vl_dir, shapes_rows, tmp_path):
    """The stock tiny model's k/v projections have 32 outputs: AWQ would crash in the middle of a layer."""
    with pytest.raises(ConfigError, match="k_proj has 32 output features; awq needs multiples of 64"):
        run_export(tmp_path / "q", model=str(tiny_vl_dir), quant_method="awq", group_size=32,
                   dataset=[str(shapes_rows)], verify_n_samples=2)
    with pytest.raises(ConfigError, match="not a multiple of --group_size 48"):
        run_export(tmp_path / "q", model=str(tiny_vl_dir), quant_method="gptq", group_size=48,
                   dataset=[str(shapes_rows)], verify_n_samples=2)
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".q.staging-*"))


def test_gptq_without_rows_is_refused(tiny_vl_dir, tmp_path):
    with pytest.raises(ConfigError, match="calibrates on data"):
        run_export(tmp_path / "q", model=str(tiny_vl_dir), quant_method="gptq")
