"""The doctor's memory estimate: exact parameter counts from a meta-device build, sane activation scaling."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from tailorkit.config.train import ModelArgs, TrainArgs, TunerArgs
from tailorkit.models.load import load_bundle
from tailorkit.models.registry import family_for_config
from tailorkit.train.memory import estimate_memory
from tailorkit.tuners.adapters import apply_tuner
from tailorkit.tuners.plan import count_parameters


@pytest.mark.parametrize("tuner", [TunerArgs(train_type="lora"), TunerArgs(train_type="full"),
                                   TunerArgs(train_type="lora", freeze_vit=False, freeze_aligner=False),
                                   TunerArgs(train_type="full", freeze_llm=True, freeze_aligner=False)],
                         ids=["lora", "full", "lora-vit", "full-aligner"])
def test_parameter_counts_match_the_loaded_model(tuner, tiny_vl_dir):
    config = AutoConfig.from_pretrained(tiny_vl_dir)
    est = estimate_memory(config, family_for_config(config), tuner, TrainArgs(), dtype=torch.float32, seq_len=64)
    bundle = load_bundle(ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32"))
    base_bytes = sum(p.numel() * p.element_size() for p in bundle.model.parameters())
    trainable, _ = count_parameters(apply_tuner(bundle, tuner)[0])
    assert est.trainable_params == trainable
    assert est.weights == base_bytes + (4 * trainable if tuner.train_type == "lora" else 0)
    assert est.gradients == 4 * trainable and est.optimizer == 8 * trainable


@pytest.mark.parametrize("train_type", ["full", "lora"])
def test_bf16_weights_include_the_fp32_masters_of_what_trains(train_type, tiny_vl_dir):
    """16-bit training holds the trained weights in fp32 (train/precision.py): the estimate counts them so."""
    from tailorkit.train.precision import upcast_trainable_to_fp32

    config = AutoConfig.from_pretrained(tiny_vl_dir)
    tuner = TunerArgs(train_type=train_type)
    est = estimate_memory(config, family_for_config(config), tuner, TrainArgs(), dtype=torch.bfloat16, seq_len=64)
    model, _ = apply_tuner(load_bundle(ModelArgs(model=str(tiny_vl_dir), torch_dtype="bfloat16")), tuner)
    upcast_trainable_to_fp32(model)
    assert est.weights == sum(p.numel() * p.element_size() for p in model.parameters())
    assert est.gradients == 4 * est.trainable_params and est.optimizer == 8 * est.trainable_params


def test_activations_scale_with_batch_and_shrink_with_checkpointing(tiny_text_dir):
    config = AutoConfig.from_pretrained(tiny_text_dir)
    fam, tuner = family_for_config(config), TunerArgs()

    def acts(**train):
        return estimate_memory(config, fam, tuner, TrainArgs(**train), dtype=torch.bfloat16, seq_len=512).activations

    one, two = acts(), acts(per_device_train_batch_size=2)
    assert two == 2 * one
    assert acts(gradient_checkpointing=True) < one
    est = estimate_memory(config, fam, tuner, TrainArgs(), dtype=torch.bfloat16, seq_len=512)
    est.available = est.total // 2
    assert est.fits is False and "does NOT fit" in est.table()
