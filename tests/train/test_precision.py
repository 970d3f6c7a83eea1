"""The CPU half of mixed precision and Liger: fp16 master weights, flag plumbing, clear errors, the loss that
Liger's fused cross-entropy computes (the model's own loss with the step's token count) equal to ours."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from helpers import hide_package
from tailorkit.cli import parse
from tailorkit.errors import ConfigError
from tailorkit.train.losses import sft_loss
from tailorkit.train.precision import check_liger_supports, liger_model_types, upcast_trainable_to_fp32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_master_weights_are_the_trainable_parameters_only(dtype):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)).to(dtype)
    model[0].requires_grad_(False)
    assert upcast_trainable_to_fp32(model) == 2
    assert [p.dtype for p in model[0].parameters()] == [dtype] * 2
    assert [p.dtype for p in model[1].parameters()] == [torch.float32] * 2
    assert upcast_trainable_to_fp32(model) == 0


def test_bf16_full_training_keeps_fp32_masters_so_small_updates_land(tiny_text_dir, tmp_path):
    """A bf16 norm weight of 1.0 cannot take an lr-1e-4 Adam step (bf16 spacing there is 0.008): with the master
    weights in fp32 every trained parameter moves at step 1 (the trainability check would stop the run)."""
    from helpers import text_chat_rows, write_jsonl
    from tailorkit.train.sft import sft

    data = write_jsonl(tmp_path / "d.jsonl", text_chat_rows(4))
    result = sft(parse("sft", ["--model", str(tiny_text_dir), "--dataset", str(data), "--train_type", "full",
                               "--torch_dtype", "bfloat16", "--max_steps", "1", "--learning_rate", "1e-4",
                               "--save_strategy", "no", "--output_dir", str(tmp_path / "out")]))
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}
    assert result.summary.status == "completed", result.summary


def test_fp16_and_liger_refused_on_cpu_with_the_reason(monkeypatch):
    base = ["--model", "m", "--dataset", "d.jsonl"]
    with pytest.raises(ConfigError, match="fp16.*needs a CUDA GPU"):
        parse("sft", [*base, "--torch_dtype", "float16"])
    with pytest.raises(ConfigError, match="--use_liger_kernel needs a CUDA GPU"):
        parse("sft", [*base, "--use_liger_kernel", "true"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    hide_package(monkeypatch, "liger_kernel")
    with pytest.raises(ConfigError, match="needs the liger-kernel package: pip install"):
        parse("sft", [*base, "--use_liger_kernel", "true"])


def test_use_liger_kernel_reaches_the_trainer_arguments(monkeypatch, tmp_path):
    from tailorkit.train.trainer import training_arguments

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the flag's own check; no kernel runs here
    cfg = parse("sft", ["--model", "m", "--dataset", "d.jsonl", "--use_liger_kernel", "true",
                        "--output_dir", str(tmp_path), "--gradient_checkpointing", "true"])
    monkeypatch.undo()
    args = training_arguments(cfg, has_eval=False)
    assert args.use_liger_kernel is True
    assert args.gradient_checkpointing is True  # under either name this transformers takes
    assert parse("sft", ["--model", "m", "--dataset", "d.jsonl"]).train.use_liger_kernel is False


def test_liger_family_check(tiny_text_dir):
    from transformers import AutoModelForCausalLM

    assert {"qwen2", "qwen2_5_vl", "llama"} <= liger_model_types()
    assert check_liger_supports(AutoModelForCausalLM.from_pretrained(tiny_text_dir)) == "qwen2"
    unsupported = SimpleNamespace(config=SimpleNamespace(model_type="idefics3"))
    with pytest.raises(ConfigError, match="Liger has no kernels for model type 'idefics3'"):
        check_liger_supports(unsupported)


@pytest.mark.parametrize("num_items", [None, 23])
def test_the_loss_the_liger_path_takes_equals_sft_loss(tiny_text_dir, num_items):
    """With --use_liger_kernel the SFT algorithm asks the model for its loss (labels + the step's token count), which
    Liger's fused cross-entropy then computes; without Liger that is transformers' loss, and it must be ours."""
    from transformers import AutoModelForCausalLM

    from tailorkit.train.algorithm import SftAlgorithm

    model = AutoModelForCausalLM.from_pretrained(tiny_text_dir, dtype=torch.float32)
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (2, 12))
    labels = ids.clone()
    labels[0, :5] = labels[1, 8:] = -100
    ours = sft_loss(model(input_ids=ids).logits, labels, num_items)
    theirs = model(input_ids=ids, labels=labels, num_items_in_batch=num_items).loss
    assert torch.allclose(ours, theirs, atol=1e-6), (ours, theirs)

    seen = {}

    class Recorder(torch.nn.Module):
        training = True

        def forward(self, **kwargs):
            seen.update(kwargs)
            return SimpleNamespace(loss=torch.tensor(1.5), logits=None)

    trainer = SimpleNamespace(args=SimpleNamespace(use_liger_kernel=True, average_tokens_across_devices=False),
                              model=Recorder())
    loss = SftAlgorithm().compute_loss(trainer, trainer.model, {"input_ids": ids, "labels": labels},
                                       num_items_in_batch=7)
    assert loss.item() == 1.5 and seen["labels"] is labels and seen["num_items_in_batch"] == 7
    assert seen["use_cache"] is False
