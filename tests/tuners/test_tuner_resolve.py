"""Plan resolution (flags -> modes, contradictions), the trainability check and the optional-package errors."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from tailorkit.cli import parse
from tailorkit.config.train import ModelArgs, TunerArgs
from tailorkit.errors import ConfigError
from tailorkit.models.qwen_vl import QWEN2_5_VL
from tailorkit.models.text import QWEN2
from tailorkit.run_files import MANIFEST_FILE
from tailorkit.tuners.manifest import TrainabilityCallback, TrainabilityError
from tailorkit.tuners.optim import build_optimizer
from tailorkit.tuners.plan import resolve_plan


def modes(family=QWEN2_5_VL, **kw):
    return resolve_plan(TunerArgs(**kw), family).modes


def test_ms_swift_defaults_and_explicit_form():
    assert modes() == {"vision": "frozen", "aligner": "frozen", "llm": "lora", "lm_head": "frozen",
                       "other": "frozen"}
    assert modes(train_type="full", freeze_vit=False) == {"vision": "full", "aligner": "frozen", "llm": "full",
                                                          "lm_head": "full", "other": "full"}
    assert modes(vit="full", aligner="full", llm="lora")["vision"] == "full"
    assert modes(train_type="full", vit="lora", llm="full")["vision"] == "lora"
    assert modes(train_type="vera", freeze_vit=False)["vision"] == "vera"
    # The explicit form agreeing with a freeze flag is fine.
    assert modes(vit="frozen", freeze_vit=True)["vision"] == "frozen"


@pytest.mark.parametrize("kw, words", [
    (dict(vit="full", freeze_vit=True), ["--vit full", "--freeze_vit true", "wins", "drop --freeze_vit"]),
    (dict(llm="frozen", freeze_llm=False), ["--llm frozen", "wins"]),
    (dict(freeze_llm=True), ["every component is frozen"]),
    (dict(vit_lr=1e-5), ["--vit_lr", "frozen"]),
    (dict(train_type="full", lorap_lr_ratio=16.0), ["lorap_lr_ratio"]),
    (dict(use_galore=True), ["--use_galore", "fully"]),
    (dict(target_regex=".*q_proj", target_modules=["q_proj"]), ["--target_regex wins"]),
    (dict(freeze_parameters=["model.visual"], trainable_parameters=["model.visual"]), ["both"]),
    (dict(train_type="full", quant_bits=4), ["quant_bits", "adapter"]),
    (dict(train_type="lisa", freeze_llm=True, freeze_vit=False), ["lisa"]),
    (dict(train_type="dummy", vit="full"), ["dummy"]),
])
def test_contradictions_are_errors(kw, words):
    with pytest.raises(ConfigError) as e:
        modes(**kw)
    for w in words:
        assert w in str(e.value)


def test_text_model_has_no_vision_tower():
    assert modes(QWEN2)["vision"] == "frozen"
    with pytest.raises(ConfigError, match="qwen2 has no vision component"):
        modes(QWEN2, vit="full")


def test_unused_arguments_are_reported():
    plan = resolve_plan(TunerArgs(train_type="dummy"), QWEN2_5_VL)
    assert {"lora_rank", "lora_alpha", "lora_dropout", "target_modules", "use_dora"} <= set(plan.unused)
    plan = resolve_plan(TunerArgs(train_type="full", lora_rank=64), QWEN2_5_VL)
    assert plan.unused == {"lora_rank": 64}
    assert resolve_plan(TunerArgs(), QWEN2_5_VL).unused == {}


def test_cli_flags_reach_the_plan(tiny_vl_dir):
    cfg = parse("sft", ["--model", str(tiny_vl_dir), "--dataset", "x.jsonl", "--vit", "full", "--llm", "lora",
                        "--aligner_lr", "2e-5", "--aligner", "full", "--lorap_lr_ratio", "16"])
    assert resolve_plan(cfg.tuner, QWEN2_5_VL).modes["aligner"] == "full"
    assert cfg.tuner.aligner_lr == 2e-5 and cfg.tuner.lorap_lr_ratio == 16.0
    with pytest.raises(ConfigError, match="is not one of"):
        parse("sft", ["--model", str(tiny_vl_dir), "--dataset", "x.jsonl", "--vit", "half"])


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Linear(4, 4)
        self.lm_head = torch.nn.Linear(4, 4)


def _training_args(tmp_path):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path), learning_rate=0.1, weight_decay=0.0, use_cpu=True,
                             report_to=[])


def _one_step(tmp_path, sabotage=None):
    """Manifest + one AdamW step on a tiny module (lm_head frozen), with an optional sabotage before the check."""
    torch.manual_seed(0)
    net = _Tiny()
    plan = resolve_plan(TunerArgs(train_type="full", freeze_parameters=["lm_head"]), QWEN2)
    net.lm_head.requires_grad_(False)
    opt = build_optimizer(net, plan, _training_args(tmp_path), set())
    cb = TrainabilityCallback(plan)
    args, state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(is_world_process_zero=True)
    cb.on_train_begin(args, state, None, model=net, optimizer=opt)
    net.lm_head(net.model(torch.randn(2, 4))).sum().backward()
    opt.step()
    if sabotage:
        sabotage(net)
    cb.on_optimizer_step(args, state, None, model=net, optimizer=opt)
    return json.loads((tmp_path / MANIFEST_FILE).read_text()), cb


def test_check_passes_and_manifest_lists_groups(tmp_path):
    m, _ = _one_step(tmp_path)
    rows = {r["component"]: r for r in m["components"]}
    assert rows["llm"] == {"component": "llm", "mode": "full", "declared": "full", "trainable": 20, "total": 20,
                           "lr": [0.1]}
    assert rows["lm_head"]["trainable"] == 0 and rows["lm_head"]["lr"] == [] and rows["lm_head"]["mode"] == "partial"


def test_check_names_a_frozen_parameter_that_moved(tmp_path):
    with pytest.raises(TrainabilityError, match=r"frozen parameters changed: lm_head.weight"):
        _one_step(tmp_path, lambda net: net.lm_head.weight.data.add_(1.0))


def test_check_names_a_trainable_parameter_that_did_not_move(tmp_path):
    # Put the bias back to its start value although it had a gradient and a learning rate.
    torch.manual_seed(0)
    start = _Tiny().model.bias.detach().clone()
    with pytest.raises(TrainabilityError, match=r"declared trainable did not change: model.bias$"):
        _one_step(tmp_path, lambda net: net.model.bias.data.copy_(start))


def test_check_waits_for_a_parameter_without_gradient(tmp_path):
    # No gradient at step 1 (a batch that does not reach it) is not a violation yet: it is re-checked later.
    torch.manual_seed(0)
    start = _Tiny().model.bias.detach().clone()
    _, cb = _one_step(tmp_path, lambda net: (net.model.bias.data.copy_(start),
                                             setattr(net.model.bias, "grad", None)))
    assert cb.pending == {"model.bias": "no gradient yet"}


def test_missing_bitsandbytes_is_a_config_error(monkeypatch, tiny_text_dir):
    import tailorkit.tuners.quant as quant

    monkeypatch.setattr(quant.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"bitsandbytes==0.50.2"):
        quant.plan_load_kwargs(ModelArgs(model=str(tiny_text_dir)), TunerArgs(train_type="qlora"))


def test_missing_galore_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "galore_torch", None)
    plan = resolve_plan(TunerArgs(train_type="full", use_galore=True), QWEN2)
    with pytest.raises(ConfigError, match="galore-torch"):
        build_optimizer(_Tiny(), plan, _training_args(tmp_path), set())


@pytest.mark.parametrize("kw, expected", [
    (dict(freeze_vit=False, target_modules=["qkv", "q_proj"]), {"vision": {"qkv"}, "llm": {"q_proj"}}),
    (dict(target_regex=r".*\.layers\.1\.mlp\.down_proj"), {"llm": {"down_proj"}}),
    (dict(vit="lora", llm="full"), {"vision": {"qkv", "proj", "gate_proj", "up_proj", "down_proj"}}),
])
def test_adapter_targets_stay_in_their_components(kw, expected, tiny_vl_dir):
    from peft.tuners.tuners_utils import BaseTunerLayer

    from tailorkit.models.load import load_bundle
    from tailorkit.tuners.adapters import apply_tuner

    bundle = load_bundle(ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32"))
    model, _ = apply_tuner(bundle, TunerArgs(**kw))
    got: dict[str, set[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            got.setdefault(QWEN2_5_VL.component_of(name), set()).add(name.rsplit(".", 1)[-1])
    assert got == expected
