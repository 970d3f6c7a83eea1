"""The forms are generated from the CLI's config dataclasses: every field has its widget, every value round-trips
form -> settings -> config, the YAML and the flags of a form give the CLI the same config."""

from __future__ import annotations

import pytest
import torch

from tailorkit.cli import parse
from tailorkit.config.eval import EvalConfig
from tailorkit.config.export import ExportConfig
from tailorkit.config.fields import concern_fields
from tailorkit.config.infer import InferConfig
from tailorkit.config.rlhf import RlhfConfig
from tailorkit.config.train import SftConfig
from tailorkit.errors import ConfigError
from tailorkit.ui import forms
from tailorkit.ui.chat_tab import EXCLUDE as CHAT_EXCLUDE
from tailorkit.ui.forms import UNSET, form_fields, settings_from_widgets, widgets_from_settings
from tailorkit.ui.paths import INPUTS, NOT_PATHS, OUTPUTS, check_inputs

REQUIRED = {SftConfig: {"model": "m", "dataset": ["d.jsonl"]}, RlhfConfig: {"model": "m", "dataset": ["d.jsonl"]},
            EvalConfig: {"model": "m", "eval_dataset": ["e.jsonl"]},
            ExportConfig: {"model": "m", "output_dir": "out", "merge_lora": True}, InferConfig: {"model": "m"}}
# A value a field only takes together with others (each field's own checks run when the config is built).
COMPANIONS = {"streaming": {"max_steps": 5}, "packing_length": {"max_length": 64},
              "precompute_ref_log_probs": {"rlhf_type": "dpo"}, "loss_type": {"rlhf_type": "dpo"},
              "quant_method": {"dataset": ["c.jsonl"]}, "hub_model_id": {"push_to_hub": True},
              "push_to_hub": {"hub_model_id": "me/model"}, "eval_dataset": {"eval_strategy": "steps"},
              "reward_weights": {"reward_funcs": ["accuracy"]}, "fsdp_config": {"fsdp": "full_shard"},
              "multi_turn_scheduler": {"rlhf_type": "grpo"},
              "max_turns": {"rlhf_type": "grpo", "multi_turn_scheduler": "tool_turns"}}
# Values the generic picker below cannot guess (a choice that depends on another field, a validated format).
SAMPLES = {"loss_type": "ipo", "quant_bits": 8, "model": "other/model", "eval_strategy": "epoch",
           "rlhf_type": "kto", "quant_method": "gptq", "packing_length": 128, "reward_weights": ["2"],
           "split_dataset_ratio": 0.25, "label_smoothing": 0.25, "num_generations": 3, "max_pixels": 4096,
           "min_pixels": 1024, "gradient_checkpointing_kwargs": {"use_reentrant": True}, "eval_backend": "evalscope",
           "vllm_limit_mm_per_prompt": {"image": 2}, "infer_backend": "vllm", "top_p": 0.5, "deepspeed": "zero3_offload",
           "fsdp": "shard_grad_op offload", "gamma": 0.5, "lam": 0.5,
           "lmdeploy_cache_max_entry_count": 0.5, "multi_turn_scheduler": "tool_turns", "fsdp_config": {"reshard_after_forward": False},
           "lr_scheduler_type": "linear", "optim": "adamw_torch", "report_to": ["tensorboard"],
           "trainer_args": {"dataloader_pin_memory": False}}
# Flags the rlhf CLI has (shared with sft) but refuses with a reason: the form hands them to the same check.
REFUSED = {RlhfConfig: {"streaming", "packing", "padding_free", "eval_dataset"}}
# Flags the config refuses on a machine without a CUDA GPU, naming the flag (built and checked where one is).
NEEDS_GPU = {"use_liger_kernel"}
FORMS = [(SftConfig, ()), (RlhfConfig, ()), (EvalConfig, ()), (ExportConfig, ()), (InferConfig, CHAT_EXCLUDE)]


def sample(ff):
    """A valid value of the field that is not its default."""
    if ff.name in SAMPLES:
        return SAMPLES[ff.name]
    if ff.kind == "bool":
        return not ff.default
    if ff.kind == "choice":
        return forms.from_widget(ff, next(c for c in ff.choices if c != UNSET and c != forms.to_widget(ff, ff.default)))
    if ff.kind == "int":
        return (ff.default or 0) + 3
    if ff.kind == "float":
        return (ff.default or 0.0) + 0.375
    if ff.kind == "list":
        return ["first item", "second/item.jsonl#3"]  # spaces survive: one item a line
    if ff.kind == "json":
        return {"key": [1, 2]}
    return "some text: with colon"


@pytest.mark.parametrize("cls,exclude", FORMS, ids=lambda x: getattr(x, "__name__", ""))
def test_every_field_round_trips_form_settings_config(cls, exclude):
    fields = form_fields(cls, exclude=exclude)
    assert {f.name for f in fields} == set(concern_fields(cls)) - set(exclude)
    checked = 0
    for ff in fields:
        value = sample(ff)
        known = {f.name for f in fields}
        companions = {k: v for k, v in COMPANIONS.get(ff.name, {}).items() if k in known}
        settings = {**REQUIRED[cls], **companions, ff.name: value}
        shown = widgets_from_settings(fields, settings)
        back = settings_from_widgets(fields, shown)
        assert back[ff.name] == value, ff.name
        if ff.name in REFUSED.get(cls, ()) or (ff.name in NEEDS_GPU and not torch.cuda.is_available()):
            with pytest.raises(ConfigError, match=ff.name):
                forms.build(cls, back)
        else:
            cfg = forms.build(cls, back)
            assert getattr(getattr(cfg, ff.concern), ff.name) == value, ff.name
        checked += 1
    assert checked == len(fields)


def test_an_empty_box_means_the_default_and_bad_values_name_the_field():
    fields = form_fields(SftConfig)
    defaults = widgets_from_settings(fields, {})
    assert settings_from_widgets(fields, defaults) == {}
    blank = ["" if isinstance(v, str) else v for v in defaults]
    assert settings_from_widgets(fields, blank) == {}
    bad = list(defaults)
    bad[[f.name for f in fields].index("lora_rank")] = "eight"
    with pytest.raises(ConfigError, match="lora_rank: expected int"):
        settings_from_widgets(fields, bad)


def test_yaml_of_the_form_and_its_flags_give_the_cli_the_same_config(tmp_path):
    fields = form_fields(RlhfConfig)
    settings = {"model": "org/model", "dataset": ["pairs with space.jsonl", "b.jsonl#5"], "rlhf_type": "dpo",
                "beta": 0.25, "freeze_vit": False, "gradient_checkpointing_kwargs": {"use_reentrant": True},
                "learning_rate": 2e-5, "lora_rank": 16}
    values = widgets_from_settings(fields, settings)
    from_form = settings_from_widgets(fields, values)
    path = tmp_path / "form.yaml"
    path.write_text(forms.to_yaml(from_form))
    by_yaml = parse("rlhf", [str(path)])
    by_flags = parse("rlhf", forms.command_flags(fields, from_form))
    assert by_yaml.flat() == by_flags.flat() == forms.build(RlhfConfig, settings).flat()


def test_a_json_setting_takes_inline_json_or_a_json_files_path_as_the_cli_does(tmp_path):
    fields = form_fields(SftConfig)
    ff = next(f for f in fields if f.name == "fsdp_config")
    assert forms.from_widget(ff, '{"cpu_offload": true}') == {"cpu_offload": True}
    path = tmp_path / "fsdp.json"
    path.write_text('{"reshard_after_forward": false}')
    assert forms.from_widget(ff, f" {path} ") == str(path)
    cfg = forms.build(SftConfig, {"model": "m", "dataset": ["d.jsonl"], "fsdp": "full_shard", "fsdp_config": str(path)})
    assert cfg.dist.fsdp_config == {"reshard_after_forward": False}
    assert forms.command_flags(fields, {"fsdp_config": str(path)}) == ["--fsdp_config", str(path)]
    with pytest.raises(ConfigError, match="fsdp_config: not valid JSON"):
        forms.from_widget(ff, '{"cpu_offload": tru}')


def test_yaml_import_reads_the_nested_layout_and_refuses_unknown_keys():
    fields = form_fields(SftConfig)
    nested = forms.read_yaml_text("pretrained_model_path: /m\nmodel: qwen2_5_vl\n"
                                  "dataset: {type: jsonl, path: ./train.jsonl}\n"
                                  "training_args: {learning_rate: 2e-5, num_train_epochs: 3}\n")
    got = settings_from_widgets(fields, widgets_from_settings(fields, nested))
    assert got == {"model": "/m", "model_alias": "qwen2_5_vl", "dataset": ["./train.jsonl"], "learning_rate": 2e-5}
    with pytest.raises(ConfigError, match="'lora_rnak' is not a setting"):
        widgets_from_settings(fields, {"lora_rnak": 8})


def test_input_paths_are_checked_before_a_run_starts(tmp_path):
    (tmp_path / "data.jsonl").write_text("{}\n")
    (tmp_path / "model").mkdir()
    ok = {"model": "model", "dataset": ["data.jsonl#5", "owner/hub-dataset:subset"], "resume_from_checkpoint": "last",
          "eval_dataset": ["qa:data.jsonl"], "deepspeed": "zero3_offload", "fsdp_config": {"cpu_offload": True}}
    assert check_inputs(ok, tmp_path) == []
    bad = {"model": "tiny-vl", "dataset": ["missing.jsonl"], "adapters": ["a=nowhere"], "eval_dataset": ["mme:MME"],
           "external_plugins": ["rewards.py"], "ckpt_dir": str(tmp_path / "gone"), "fsdp_config": "fsdp.json",
           "teacher_adapters": ["sft-run"]}
    problems = check_inputs(bad, tmp_path)
    assert [p.split(":")[0] for p in problems] == ["model", "teacher_adapters", "dataset", "eval_dataset", "adapters",
                                                   "ckpt_dir", "external_plugins", "fsdp_config"]
    assert f"'missing.jsonl' does not exist (relative to {tmp_path})" in problems[2]


def test_every_text_field_is_classified_as_an_input_path_an_output_path_or_no_path():
    from tailorkit.config.ui import AppConfig, WebUiConfig
    from tailorkit.doctor import DoctorConfig

    text = {f.name for cls in (SftConfig, RlhfConfig, EvalConfig, ExportConfig, InferConfig, DoctorConfig, AppConfig,
                               WebUiConfig) for f in form_fields(cls) if f.kind in ("text", "list")}
    unclassified = text - set(INPUTS) - set(OUTPUTS) - set(NOT_PATHS)
    assert not unclassified, f"classify these in ui/paths.py (a new field that reads a path is checked): {unclassified}"
    assert not set(INPUTS) & set(NOT_PATHS) and not set(OUTPUTS) & set(NOT_PATHS)
