"""Export of real training checkpoints: a mixed plan (ViT full + LLM LoRA) and a QLoRA run, from --ckpt_dir."""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import logits, run_export, tensors, text_inputs, vl_inputs
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from tailorkit.config.train import SftConfig
from tailorkit.config.loading import build_config
from tailorkit.train.sft import sft

pytestmark = pytest.mark.slow


def _train(model_dir, data, out, **settings):
    values = dict(model=str(model_dir), dataset=[str(data)], torch_dtype="float32", max_steps=1, save_strategy="no",
                  logging_steps=1, output_dir=str(out), learning_rate=1e-2, seed=0)
    return sft(build_config(SftConfig, {**values, **settings}))


def test_vit_full_aligner_full_llm_lora(tiny_vl_dir, shapes_rows, tmp_path):
    result = _train(tiny_vl_dir, shapes_rows, tmp_path / "run", vit="full", aligner="full", llm="lora")
    adapter_config = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert "model.visual" in " ".join(adapter_config["modules_to_save"])  # the ViT travels inside the adapter
    out = tmp_path / "merged"
    run_export(out, ckpt_dir=str(tmp_path / "run"), dataset=[str(shapes_rows)], verify_n_samples=2)
    merged = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32)
    inputs = vl_inputs(AutoProcessor.from_pretrained(out))
    torch.testing.assert_close(logits(merged, inputs), logits(result.model, inputs), rtol=0, atol=1e-4)
    base, written = tensors(tiny_vl_dir), tensors(out)
    trained = dict(result.model.named_parameters())
    qkv = "visual.blocks.0.attn.qkv.weight"  # file key of model.visual.blocks.0.attn.qkv.weight
    assert not torch.equal(written[qkv], base[qkv])  # ms-swift's merge drops exactly this
    torch.testing.assert_close(written[qkv], trained["base_model.model.model." + qkv].detach(), rtol=0, atol=0)


def test_qlora_merges_onto_the_unquantized_base(tiny_text_dir, tmp_path):
    from helpers import text_chat_rows, write_jsonl

    data = write_jsonl(tmp_path / "rows.jsonl", text_chat_rows(4))
    result = _train(tiny_text_dir, data, tmp_path / "run", train_type="qlora", quant_bits=4,
                    target_modules=["q_proj", "v_proj"])
    out = tmp_path / "merged"
    report = run_export(out, ckpt_dir=str(result.final_dir)).report
    assert any("unquantized base" in n for n in report["notes"])
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    # merged = fp32 base + B A * scale exactly: a merge onto the NF4 base would carry its ~1e-2 rounding error.
    from safetensors.torch import load_file

    lora = load_file(str(result.final_dir / "adapter_model.safetensors"))
    scale = json.loads((result.final_dir / "adapter_config.json").read_text())
    scale = scale["lora_alpha"] / scale["r"]
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    delta = (lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]) * scale
    assert delta.abs().max() > 1e-4  # the adapter trained
    base = tensors(tiny_text_dir)["model.layers.0.self_attn.q_proj.weight"]
    merged = tensors(out)["model.layers.0.self_attn.q_proj.weight"]
    assert merged.dtype == torch.float32
    torch.testing.assert_close(merged, base + delta, rtol=0, atol=1e-6)
    tok = AutoTokenizer.from_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert torch.isfinite(logits(reloaded, text_inputs(tok))).all()


def test_dummy_run_merges_the_shipped_adapters_it_trained(tiny_vl_dir, shapes_rows, tmp_path):
    """`--train_type dummy` trains the adapters a model ships (e.g. Phi-4-mm's vision-lora); the checkpoint's
    top-level adapter is the trained one, and merging it gives the trained model's logits."""
    from tailorkit.models.tiny import build_qwen2_5_vl
    from tailorkit.testing import build_random_lora

    base_dir = tmp_path / "shipped"
    build_qwen2_5_vl(base_dir)
    shipped = build_random_lora(base_dir, base_dir / "vision-lora", seed=0, alpha=8,
                                target_modules=r".*\.(qkv|q_proj|v_proj)$")
    result = _train(base_dir, shapes_rows, tmp_path / "run", train_type="dummy", adapters=[str(shipped)])
    assert (result.final_dir / "vision-lora" / "adapter_config.json").is_file()
    out = tmp_path / "merged"
    report = run_export(out, ckpt_dir=str(tmp_path / "run")).report
    assert report["model"] == str(base_dir)
    merged = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32)
    inputs = vl_inputs(AutoProcessor.from_pretrained(out))
    torch.testing.assert_close(logits(merged, inputs), logits(result.model, inputs), rtol=0, atol=1e-4)
