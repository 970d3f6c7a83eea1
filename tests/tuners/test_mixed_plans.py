"""The four mixed plans of issue 4 on the tiny Qwen2.5-VL: manifest, change check, lr groups, save/reload."""

from __future__ import annotations

import pytest
import torch
from helpers import build_random_lora, load_checkpoint
from transformers import AutoModelForImageTextToText
from tuner_helpers import changed_components, logits, manifest, plain_params, run, vl_inputs, write_vl_data

from tailorkit.models.qwen_vl import QWEN2_5_VL
from tailorkit.models.tiny import build_qwen2_5_vl

pytestmark = pytest.mark.slow

BASE_LR = 1e-3


@pytest.fixture(scope="module")
def vl_data(tmp_path_factory):
    return write_vl_data(tmp_path_factory.mktemp("vl-data"))


def _check_run(result, base_dir, out, expect_modes, expect_changed, lrs):
    m = manifest(out)
    rows = m["by_component"]
    assert {c: rows[c]["mode"] for c in expect_modes} == expect_modes
    for comp, mode in expect_modes.items():
        row = rows[comp]
        if mode == "frozen":
            assert row["trainable"] == 0 and row["lr"] == []
        elif mode == "full":
            assert row["trainable"] == row["total"] > 0
        else:  # an adapter: its parameters are trainable, the base weights are not counted as trainable
            assert 0 < row["trainable"]
        if comp in lrs:
            assert row["lr"] == [lrs[comp]]
    # The optimizer's groups as built by the Trainer, saved before step 1.
    group_lrs = {g["name"].split("/")[0]: g["lr"] for g in m["param_groups"]}
    for comp, lr in lrs.items():
        assert group_lrs[comp] == pytest.approx(lr)
    # Independently of the run's own check: which base weights moved.
    base = AutoModelForImageTextToText.from_pretrained(str(base_dir), dtype=torch.float32)
    moved = changed_components(plain_params(base), plain_params(result.model), QWEN2_5_VL)
    assert {c: moved[c] for c in expect_changed} == {c: {v} for c, v in expect_changed.items()}
    # Save -> reload with plain transformers/peft -> same logits as the trained model in memory.
    reloaded = load_checkpoint(base_dir, result.final_dir, "AutoModelForImageTextToText", dtype=torch.float32)
    inputs = vl_inputs(result.bundle.processor)
    trained_logits = logits(result.model, inputs)
    torch.testing.assert_close(logits(reloaded, inputs), trained_logits, rtol=0, atol=1e-5)
    assert not torch.allclose(logits(base, inputs), trained_logits, atol=1e-4)


def test_vit_full_aligner_full_llm_lora(tiny_vl_dir, vl_data, tmp_path):
    out = tmp_path / "run"
    result = run(tiny_vl_dir, vl_data, out, vit="full", aligner="full", llm="lora", vit_lr=2e-4)
    _check_run(result, tiny_vl_dir, out, {"vision": "full", "aligner": "full", "llm": "lora", "lm_head": "frozen"},
               {"vision": True, "aligner": True, "llm": False, "lm_head": False},
               {"vision": 2e-4, "aligner": BASE_LR, "llm": BASE_LR})


def test_vit_lora_llm_full(tiny_vl_dir, vl_data, tmp_path):
    out = tmp_path / "run"
    result = run(tiny_vl_dir, vl_data, out, vit="lora", llm="full", vit_lr=5e-4)
    _check_run(result, tiny_vl_dir, out, {"vision": "lora", "aligner": "frozen", "llm": "full", "lm_head": "full"},
               {"vision": False, "aligner": False, "llm": True, "lm_head": True},
               {"vision": 5e-4, "llm": BASE_LR, "lm_head": BASE_LR})


def test_only_aligner_trained(tiny_vl_dir, vl_data, tmp_path):
    out = tmp_path / "run"
    result = run(tiny_vl_dir, vl_data, out, train_type="full", freeze_aligner=False, freeze_llm=True,
                 aligner_lr=3e-4)
    _check_run(result, tiny_vl_dir, out, {"vision": "frozen", "aligner": "full", "llm": "frozen",
                                          "lm_head": "frozen"},
               {"vision": False, "aligner": True, "llm": False, "lm_head": False}, {"aligner": 3e-4})


@pytest.fixture(scope="module")
def shipped_model(tmp_path_factory):
    """A tiny VL model that ships its own LoRA adapter in ``vision-lora/``, the way Phi-4-multimodal does.

    Phi-4-multimodal's checkpoint carries peft adapters that are part of the model; a fresh LoRA on top of
    them conflicts, and the right plan is ``--train_type dummy`` with ``--adapters model/vision-lora``.
    """
    base_dir = tmp_path_factory.mktemp("shipped") / "model"
    build_qwen2_5_vl(base_dir)
    shipped = build_random_lora(base_dir, base_dir / "vision-lora", seed=0, alpha=8,
                                target_modules=r".*\.(qkv|q_proj|v_proj)$")
    return base_dir, shipped


def test_lora_prefix_lists_are_saved(tiny_vl_dir, vl_data, tmp_path):
    out = tmp_path / "run"
    result = run(tiny_vl_dir, vl_data, out, trainable_parameters=["model.language_model.norm", "lm_head"],
                 freeze_parameters=["model.language_model.layers.0"])
    m = manifest(out)
    assert {"model.language_model.norm", "lm_head"} <= set(m["full_modules_saved_with_adapter"])
    assert m["by_component"]["lm_head"]["mode"] == "partial" and m["by_component"]["lm_head"]["declared"] == "frozen"
    _check_run(result, tiny_vl_dir, out, {"vision": "frozen", "llm": "lora"},
               {"vision": False, "aligner": False, "lm_head": True}, {"llm": BASE_LR, "lm_head": BASE_LR})
    layer0 = [n for n, p in result.model.named_parameters() if ".layers.0." in n and p.requires_grad]
    assert layer0 == []


def test_new_lora_on_shipped_adapters_warns(shipped_model, vl_data, tmp_path, tiny_vl_dir):
    from tailorkit.config.train import ModelArgs, TunerArgs
    from tailorkit.models.load import load_bundle
    from tailorkit.tuners.adapters import apply_tuner

    base_dir, shipped = shipped_model
    bundle = load_bundle(ModelArgs(model=str(base_dir), torch_dtype="float32"))
    with pytest.warns(UserWarning, match="--train_type dummy"):
        apply_tuner(bundle, TunerArgs(train_type="lora", adapters=[str(shipped)]))
    from tailorkit.errors import ConfigError
    # without --adapters, dummy finds the peft folders inside the model directory (as Phi-4-multimodal ships them)
    found, _ = apply_tuner(load_bundle(ModelArgs(model=str(base_dir), torch_dtype="float32")),
                        TunerArgs(train_type="dummy"))
    assert set(found.peft_config) == {shipped.name}
    with pytest.raises(ConfigError, match="has none"):
        apply_tuner(load_bundle(ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32")),
                    TunerArgs(train_type="dummy"))


def test_dummy_trains_the_shipped_adapters(shipped_model, tmp_path, vl_data):
    base_dir, shipped = shipped_model
    out = tmp_path / "run"
    result = run(base_dir, vl_data, out, train_type="dummy", adapters=[str(shipped)], lora_rank=16)
    m = manifest(out)
    assert m["adapter"] == "existing"
    assert {"lora_rank", "lora_alpha", "lora_dropout", "target_modules"} <= set(m["unused_arguments"])
    # No new adapter: the only adapter parameters are the shipped ones, trained in the LLM only.
    names = [n for n, _ in result.model.named_parameters() if ".lora_" in n]
    assert names and all(".vision-lora." in n for n in names)
    trained = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n and n.startswith("model.language_model.") for n in trained)
    # Reload: base + the saved adapter folder gives the trained logits; the shipped adapter alone does not.
    _check_dummy_reload(result, base_dir, shipped)


def _check_dummy_reload(result, base_dir, shipped):
    # The checkpoint keeps the shipped layout: one peft folder per adapter, loaded like the original.
    reloaded = AutoModelForImageTextToText.from_pretrained(str(base_dir), dtype=torch.float32)
    reloaded.load_adapter(str(result.final_dir / "vision-lora"), adapter_name="vision-lora")
    inputs = vl_inputs(result.bundle.processor)
    trained = logits(result.model, inputs)
    torch.testing.assert_close(logits(reloaded, inputs), trained, rtol=0, atol=1e-5)
    original = AutoModelForImageTextToText.from_pretrained(str(base_dir), dtype=torch.float32)
    original.load_adapter(str(shipped), adapter_name="vision-lora")
    assert not torch.allclose(logits(original, inputs), trained, atol=1e-4)


def test_mixed_plan_resumes_to_the_same_weights(tiny_vl_dir, vl_data, tmp_path):
    import shutil

    kw = dict(vit="full", llm="lora", steps=4, save_strategy="steps", save_steps=2, lr_scheduler_type="constant")
    whole = run(tiny_vl_dir, vl_data, tmp_path / "a", **kw)
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    resumed = run(tiny_vl_dir, vl_data, tmp_path / "b", resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"),
                  **kw)
    after = dict(resumed.model.named_parameters())
    # The fully trained ViT lives in the adapter checkpoint: restoring it matters.
    base = AutoModelForImageTextToText.from_pretrained(str(tiny_vl_dir), dtype=torch.float32)
    vit = "model.visual.blocks.0.attn.qkv.weight"
    assert not torch.allclose(after["base_model.model." + vit], dict(base.named_parameters())[vit])
    for name, p in whole.model.named_parameters():
        torch.testing.assert_close(after[name], p, rtol=0, atol=1e-6, msg=name)
