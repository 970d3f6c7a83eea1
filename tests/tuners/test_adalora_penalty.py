"""AdaLoRA's orthogonality regulariser reaches the loss although our loss is computed outside peft."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, TrainingArguments

from tailorkit.config.train import ModelArgs, TunerArgs
from tailorkit.models.load import load_bundle
from tailorkit.train.algorithm import SftAlgorithm
from tailorkit.train.losses import sft_loss
from tailorkit.train.trainer import Trainer
from tailorkit.tuners.adapters import apply_tuner
from tailorkit.tuners.runtime import adapter_penalty


def _adalora(tiny_text_dir):
    bundle = load_bundle(ModelArgs(model=str(tiny_text_dir), torch_dtype="float32"))
    model, plan = apply_tuner(bundle, TunerArgs(train_type="adalora", lora_rank=4))
    tok = AutoTokenizer.from_pretrained(tiny_text_dir)
    ids = torch.tensor([tok("the quick brown fox jumps")["input_ids"]])
    return model, plan, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_penalty_equals_what_peft_adds_to_a_model_computed_loss(tiny_text_dir):
    model, plan, batch = _adalora(tiny_text_dir)
    penalty = adapter_penalty(model, plan)
    assert penalty is not None and penalty.item() > 0
    with torch.no_grad():
        with_reg = model.base_model(**batch).loss  # peft's AdaLoraModel.forward adds its regulariser here
        plain = model.base_model.model(**batch).loss
    torch.testing.assert_close(with_reg - plain, penalty.detach(), rtol=1e-5, atol=1e-6)


def test_trainer_loss_includes_the_penalty_once_per_step(tiny_text_dir, tmp_path):
    model, plan, batch = _adalora(tiny_text_dir)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], gradient_accumulation_steps=2)
    trainer = Trainer(model=model, args=args, algorithm=SftAlgorithm(plan), plan=plan)
    model.train()
    labels = batch.pop("labels")
    loss = trainer.compute_loss(model, {**batch, "labels": labels})
    with torch.no_grad():
        expected = sft_loss(model(**batch).logits, labels) + adapter_penalty(model, plan) / 2
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
