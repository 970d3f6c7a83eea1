"""Every train type trains a few steps on the tiny text and vision-language models, checked by the plan."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tuner_helpers import manifest, run, write_text_data, write_vl_data

pytestmark = pytest.mark.slow

# name -> (settings, expected adapter in the manifest)
TRAIN_TYPES = {
    "full": ({"train_type": "full"}, None),
    "lora": ({"train_type": "lora"}, "lora"),
    "dora": ({"train_type": "dora"}, "dora"),
    "lora+use_dora": ({"train_type": "lora", "use_dora": True}, "dora"),
    "rslora": ({"train_type": "lora", "use_rslora": True}, "lora"),
    "pissa": ({"train_type": "lora", "init_weights": "pissa"}, "lora"),
    "olora": ({"train_type": "lora", "init_weights": "olora"}, "lora"),
    "gaussian": ({"train_type": "lora", "init_weights": "gaussian"}, "lora"),
    "adalora": ({"train_type": "adalora"}, "adalora"),
    "vera": ({"train_type": "vera"}, "vera"),
    "boft": ({"train_type": "boft"}, "boft"),
    "loha": ({"train_type": "loha"}, "loha"),
    "lokr": ({"train_type": "lokr"}, "lokr"),
    "ia3": ({"train_type": "ia3"}, "ia3"),
    "lisa": ({"train_type": "lisa", "lisa_activated_layers": 1, "lisa_step_interval": 1}, None),
}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("types-data")
    return {"text": write_text_data(root / "text"), "vl": write_vl_data(root / "vl")}


# Variants of LoRA's initialisation and scaling run on the text model only; every train type runs on both.
TEXT_ONLY = {"lora+use_dora", "rslora", "pissa", "olora", "gaussian"}
CASES = [(name, model) for name in TRAIN_TYPES for model in ("text", "vl") if model == "text" or name not in TEXT_ONLY]


@pytest.mark.parametrize("name, model", CASES)
def test_train_type_trains(name, model, datasets, tiny_text_dir, tiny_vl_dir, tmp_path):
    settings, adapter = TRAIN_TYPES[name]
    model_dir = tiny_text_dir if model == "text" else tiny_vl_dir
    result = run(model_dir, datasets[model], tmp_path / "run", steps=2, **settings)
    losses = [r["loss"] for r in result.log_history if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    m = manifest(tmp_path / "run")
    assert m["adapter"] == adapter
    assert m["by_component"]["llm"]["mode"] == ({"full": "full", "lisa": "lisa"}.get(settings["train_type"]) or adapter)
    assert 0 < m["trainable"] < m["total"] or settings["train_type"] in ("full", "lisa")


def test_lisa_switches_layers(tiny_text_dir, datasets, tmp_path):
    result = run(tiny_text_dir, datasets["text"], tmp_path / "run", steps=2, train_type="lisa",
                 lisa_activated_layers=1, lisa_step_interval=1)
    layers = result.model.model.layers
    active = [all(p.requires_grad for p in layer.parameters()) for layer in layers]
    assert sum(active) == 1
    assert result.model.lm_head.weight.requires_grad and result.model.model.embed_tokens.weight.requires_grad
    assert "lisa" in " ".join(manifest(tmp_path / "run")["notes"])


def test_lora_plus_group_learning_rate(tiny_text_dir, datasets, tmp_path):
    run(tiny_text_dir, datasets["text"], tmp_path / "run", steps=1, lorap_lr_ratio=16.0, learning_rate=1e-4)
    groups = {g["name"]: g["lr"] for g in manifest(tmp_path / "run")["param_groups"]}
    assert groups["llm/lora_B"] == pytest.approx(16e-4)
    assert groups["llm"] == pytest.approx(1e-4)


def test_galore(tiny_text_dir, datasets, tmp_path):
    pytest.importorskip("galore_torch", reason="galore-torch is not installed (pip install galore-torch==1.0)")
    result = run(tiny_text_dir, datasets["text"], tmp_path / "run", steps=2, train_type="full", use_galore=True,
                 galore_rank=4, galore_update_proj_gap=1)
    m = manifest(tmp_path / "run")
    assert m["optimizer"].startswith("galore_torch.")
    assert any(g["name"].startswith("llm/galore") for g in m["param_groups"])
    assert result.log_history


@pytest.mark.parametrize("bits, model", [(4, "text"), (8, "text"), (4, "vl")])
def test_qlora_cpu(bits, model, tiny_text_dir, tiny_vl_dir, datasets, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (dev extra bitsandbytes==0.50.2)")
    model_dir = tiny_text_dir if model == "text" else tiny_vl_dir
    extra = {"vit": "full"} if model == "vl" else {}  # a mixed plan: the fully trained ViT stays unquantized
    result = run(model_dir, datasets[model], tmp_path / "run", steps=2, train_type="qlora", quant_bits=bits,
                 **extra)
    quantized = {n for n, p in result.model.named_parameters() if not p.is_floating_point()}
    assert quantized and all(".language_model." in n or model == "text" for n in quantized)
    m = manifest(tmp_path / "run")
    assert m["adapter"] == "lora"
    base = m["by_component"]["llm"]
    expected_total = sum(p.numel() for n, p in _reference(model_dir).named_parameters() if "lm_head" not in n
                         and "visual" not in n)
    # Counted as unpacked weights (not packed 4-bit storage) plus the adapter's own parameters.
    assert base["total"] - base["trainable"] == expected_total
    if model == "vl":
        assert m["by_component"]["vision"]["trainable"] == m["by_component"]["vision"]["total"]


def _reference(model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(str(model_dir))
    auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    return auto.from_pretrained(str(model_dir))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_qlora_gpu(tiny_vl_dir, datasets, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (dev extra bitsandbytes==0.50.2)")
    result = run(tiny_vl_dir, datasets["vl"], tmp_path / "run", steps=2, train_type="qlora", quant_bits=4,
                 torch_dtype="bfloat16")
    assert any(not p.is_floating_point() for p in result.model.parameters())


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_base_mutating_init_checkpoint_reloads(init, tiny_text_dir, datasets, tmp_path):
    from transformers import AutoModelForCausalLM
    from tuner_helpers import logits, text_inputs

    from helpers import load_checkpoint

    result = run(tiny_text_dir, datasets["text"], tmp_path / "run", steps=2, init_weights=init, lora_rank=4)
    # Saved as plain LoRA (rank 2r, no re-initialisation on load): vLLM, merging and peft read it on the base.
    config = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert config["init_lora_weights"] is True and config["r"] == 8
    reloaded = load_checkpoint(tiny_text_dir, result.final_dir, "AutoModelForCausalLM", dtype=torch.float32)
    inputs = text_inputs(result.bundle.tokenizer)
    trained = logits(result.model, inputs)
    torch.testing.assert_close(logits(reloaded, inputs), trained, rtol=0, atol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_text_dir), dtype=torch.float32)
    assert not torch.allclose(logits(base, inputs), trained, atol=1e-4)


def test_warmup_manifest_shows_peak_lr_and_check_waits(tiny_text_dir, datasets, tmp_path):
    # Linear warm-up makes the first step's lr 0: nothing can move, the check re-tests at the next step.
    result = run(tiny_text_dir, datasets["text"], tmp_path / "run", steps=3, train_type="full", warmup_ratio=0.5,
                 lr_scheduler_type="linear", learning_rate=2e-3)
    m = manifest(tmp_path / "run")
    assert m["by_component"]["llm"]["lr"] == [2e-3]
    assert [r["learning_rate"] for r in result.log_history if "learning_rate" in r][0] < 2e-3
