"""Tiny models load with plain transformers and are deterministic; the demo meets its targets."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from tailorkit.cli import main
from tailorkit.demo.run import DemoConfig, _DemoArgs, demo
from tailorkit.models.tiny import build_qwen2


def test_tiny_models_load_with_plain_auto_classes(tiny_text_dir, tiny_vl_dir):
    assert isinstance(AutoModelForCausalLM.from_pretrained(tiny_text_dir), torch.nn.Module)
    assert type(AutoModelForImageTextToText.from_pretrained(tiny_vl_dir)).__name__ == \
        "Qwen2_5_VLForConditionalGeneration"
    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert "<|vision_start|><|image_pad|><|vision_end|>" in processor.chat_template
    tok = AutoProcessor.from_pretrained(tiny_text_dir)
    assert tok.convert_tokens_to_ids("<|im_end|>") == AutoModelForCausalLM.from_pretrained(
        tiny_text_dir).config.eos_token_id


def test_tiny_build_is_deterministic(tiny_text_dir, tmp_path):
    build_qwen2(tmp_path / "again")
    a, b = load_file(tiny_text_dir / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tiny_text_dir / "tokenizer.json").read_text() == (tmp_path / "again" / "tokenizer.json").read_text()


def test_tiny_verb_refuses_to_overwrite(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("user data")
    assert main(["tiny", "--model_type", "qwen2", "--output_dir", str(tmp_path / "x")]) == 2
    assert (tmp_path / "x" / "keep.txt").read_text() == "user data"


@pytest.mark.slow
def test_demo_reaches_its_accuracy_target(tmp_path):
    result = demo(DemoConfig(_DemoArgs(output_dir=str(tmp_path))))
    assert result.accuracy_after >= 0.9
    assert result.choice_before < 0.6  # an untrained model is near chance (29%) when picking among answers
    assert (result.run_dir / "train" / "loss.png").is_file()
    assert (result.run_dir / "train" / "checkpoint-final" / "model.safetensors").is_file()
