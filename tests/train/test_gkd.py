"""`rlhf --rlhf_type gkd`: the student's KL to its teacher falls (on- and off-policy batches); a VL step with images;
a teacher from adapters on the student's base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import build_random_lora

from tailorkit.cli import parse
from tailorkit.data.collate import Collator
from tailorkit.data.dataset import encode_all, load_conversations
from tailorkit.errors import ConfigError
from tailorkit.train.gkd import gkd_loss
from tailorkit.train.rlhf import rlhf

WORDS = ["red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "triangle", "star", "cat", "dog"]
COMMON = ["--torch_dtype", "float32", "--save_strategy", "no", "--lr_scheduler_type", "constant", "--weight_decay",
          "0"]


def _teacher(base: Path, out: Path) -> Path:
    """Another model with the student's tokenizer: the tiny LM perturbed, with a sharper head."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        model.lm_head.weight.mul_(3)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def _chat(path: Path) -> str:
    rows = [{"messages": [{"role": "user", "content": f"Tell me about the {w}."},
                          {"role": "assistant", "content": f"The {w} is nice."}]} for w in WORDS]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _teacher_kl(student, teacher, data: str, tok) -> float:
    """KL(teacher || student) per reply token of the dataset, measured outside the run."""
    encoded, _ = encode_all(load_conversations([data]), tok, max_length=256, truncation="raise")
    batch = Collator(tok.pad_token_id)(encoded)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        return gkd_loss(student(**inputs).logits, teacher(**inputs).logits, batch["labels"], beta=0.0).item()


@pytest.mark.slow
def test_gkd_student_kl_to_teacher_falls(tiny_text_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher_dir = _teacher(tiny_text_dir, tmp_path / "teacher")
    data = _chat(tmp_path / "chat.jsonl")
    result = rlhf(parse("rlhf", COMMON + [
        "--rlhf_type", "gkd", "--model", str(tiny_text_dir), "--teacher_model", str(teacher_dir), "--dataset", data,
        "--train_type", "full", "--learning_rate", "3e-3", "--per_device_train_batch_size", "4",
        "--max_completion_length", "8", "--max_steps", "20", "--logging_steps", "5", "--lmbda", "0.5",
        "--output_dir", str(tmp_path / "out")]))
    tok = AutoTokenizer.from_pretrained(tiny_text_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    before = _teacher_kl(AutoModelForCausalLM.from_pretrained(tiny_text_dir).eval(), teacher, data, tok)
    after = _teacher_kl(result.model.eval(), teacher, data, tok)
    print(f"gkd KL(teacher || student) per reply token: before {before:.3f}, after {after:.3f}")
    assert after < 0.7 * before, (before, after)
    on_policy = [r["on_policy"] for r in result.log_history if "on_policy" in r]
    assert 0 < sum(on_policy) / len(on_policy) < 1  # both student-generated and dataset batches were distilled
    assert all("teacher_kl" in r and "entropy" in r for r in result.log_history if "loss" in r)


@pytest.mark.slow
def test_gkd_vl_rows_on_policy_with_top_k(tiny_vl_dir, tmp_path):
    """Images go to the student and the teacher (here the base itself: the LoRA student with its adapter off), and
    on-policy completions start from the encoder's prompt of each row."""
    from PIL import Image

    rows = []
    for name, rgb in {"red": (220, 30, 30), "blue": (30, 30, 220)}.items():
        Image.new("RGB", (56, 56), rgb).save(tmp_path / f"{name}.png")
        rows.append({"messages": [{"role": "user", "content": "<image>What colour is it?"},
                                  {"role": "assistant", "content": name}], "images": [f"{name}.png"]})
    (tmp_path / "vl.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = rlhf(parse("rlhf", COMMON + [
        "--rlhf_type", "gkd", "--model", str(tiny_vl_dir), "--teacher_model", str(tiny_vl_dir),
        "--dataset", str(tmp_path / "vl.jsonl"), "--learning_rate", "1e-2", "--per_device_train_batch_size", "2",
        "--max_completion_length", "4", "--max_steps", "2", "--logging_steps", "1", "--lmbda", "1.0",
        "--gkd_logits_topk", "8", "--output_dir", str(tmp_path / "out")]))
    logs = [r for r in result.log_history if "loss" in r]
    assert [r["on_policy"] for r in logs] == [1.0, 1.0]
    assert logs[0]["teacher_kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: the student is its teacher
    assert logs[1]["teacher_kl"] > 0  # then it has moved


def test_gkd_teacher_from_adapters_and_its_checks(tiny_text_dir, tmp_path):
    from tailorkit.train.gkd import load_teacher

    adapter = build_random_lora(tiny_text_dir, tmp_path / "sft-adapter", seed=4)
    cfg = parse("rlhf", ["--rlhf_type", "gkd", "--model", str(tiny_text_dir), "--dataset", "d.jsonl",
                         "--teacher_adapters", str(adapter), "--torch_dtype", "float32"])
    from tailorkit.models.load import load_bundle

    student = load_bundle(cfg.model)
    teacher = load_teacher(cfg, student).model
    assert teacher is not None and not any("lora" in n for n, _ in teacher.named_parameters())  # merged
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(teacher(input_ids=ids).logits, student.model(input_ids=ids).logits)
    with pytest.raises(ConfigError, match="gkd distils a teacher"):
        parse("rlhf", ["--rlhf_type", "gkd", "--model", str(tiny_text_dir), "--dataset", "d.jsonl"])
    with pytest.raises(ConfigError, match="lmbda is a probability"):
        parse("rlhf", ["--rlhf_type", "gkd", "--model", "m", "--dataset", "d.jsonl", "--teacher_model", "t",
                       "--lmbda", "2"])
