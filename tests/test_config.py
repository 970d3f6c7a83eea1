"""Settings: ms-swift names, YAML (flat and nested), precedence, unknown and rejected keys, CLI help."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tailorkit.cli import main, parse
from tailorkit.config import SftConfig
from tailorkit.config.fields import concern_fields
from tailorkit.errors import ConfigError, TailorkitError


def _yaml(tmp_path, data) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data) if isinstance(data, dict) else data)
    return str(path)


def test_flat_yaml_positional_and_flag_forms(tmp_path):
    path = _yaml(tmp_path, {"model": "m", "dataset": ["a.jsonl#10", "b.jsonl"], "tuner_type": "full",
                            "lora_rank": 16, "learning_rate": "2e-5", "gradient_checkpointing_kwargs":
                            '{"use_reentrant": true}', "freeze_vit": "false"})
    for argv in ([path], ["--config", path]):
        cfg = parse("sft", argv)
        assert cfg.model.model == "m"
        assert cfg.data.dataset == ["a.jsonl#10", "b.jsonl"]
        assert cfg.tuner.train_type == "full" and cfg.tuner.lora_rank == 16
        assert cfg.train.learning_rate == pytest.approx(2e-5)
        assert cfg.train.gradient_checkpointing_kwargs == {"use_reentrant": True}
        assert cfg.tuner.freeze_vit is False


def test_flags_override_the_file(tmp_path):
    path = _yaml(tmp_path, {"model": "m", "dataset": "d.jsonl", "lora_rank": 64, "tuner_type": "full"})
    cfg = parse("sft", [path, "--lora_rank", "8", "--train_type", "lora", "--freeze_vit", "false"])
    assert cfg.tuner.lora_rank == 8 and cfg.tuner.train_type == "lora" and cfg.tuner.freeze_vit is False
    assert cfg.train.learning_rate == pytest.approx(1e-4)  # lora default, resolved


def test_nested_tutorial_layout_is_applied(tmp_path):
    path = _yaml(tmp_path, """
model: Qwen2.5-VL
pretrained_model_path: /path/to/checkpoint
train_type: lora
lora_rank: 64
dataset: {type: jsonl, path: ./data/train.jsonl}
training_args: {per_device_train_batch_size: 2, gradient_accumulation_steps: 8, learning_rate: 2e-5,
                num_train_epochs: 3, save_strategy: epoch}
parallel_config: {tensor_parallel_size: 1, pipeline_parallel_size: 1, zero_stage: 0}
""")
    cfg = parse("sft", [path])
    assert cfg.model.model == "/path/to/checkpoint" and cfg.model.model_type == "Qwen2.5-VL"
    assert cfg.tuner.lora_rank == 64 and cfg.data.dataset == ["./data/train.jsonl"]
    assert cfg.train.per_device_train_batch_size == 2 and cfg.train.gradient_accumulation_steps == 8
    assert cfg.train.learning_rate == pytest.approx(2e-5) and cfg.train.num_train_epochs == 3
    assert cfg.train.save_strategy == "epoch" and cfg.dist.deepspeed is None


@pytest.mark.parametrize("extra, message", [
    ("parallel_config: {tensor_parallel_size: 2}", "tensor parallelism is not supported"),
    ("parallel_config: {pipeline_parallel_size: 2}", "pipeline parallelism is not supported"),
    ("deepspeed: zero4", "deepspeed='zero4' is neither a preset (zero0, zero1, zero2, zero3, zero2_offload"),
    ("fsdp: full_shard\ndeepspeed: zero2", "--fsdp and --deepspeed are two engines"),
    ("fsdp: half_shard", "give one of full_shard, shard_grad_op"),
    ("training_args: {fp16: true}", "float16 training (fp16) needs a CUDA GPU"),
    ("parallel_config: {expert_parallel: 2}", "parallel_config.expert_parallel is not a known setting"),
    ("dataset: {type: csv, path: train.jsonl}", "does not match the file"),
])
def test_keys_that_cannot_apply_are_rejected_with_the_reason(tmp_path, extra, message):
    text = "model: m\ndataset: d.jsonl\n" if not extra.startswith("dataset") else "model: m\n"
    path = _yaml(tmp_path, text + extra + "\n")
    with pytest.raises(ConfigError) as err:
        parse("sft", [path])
    assert message in str(err.value)


def test_unknown_yaml_key_suggests_the_right_name(tmp_path):
    path = _yaml(tmp_path, {"model": "m", "dataset": "d.jsonl", "lora_rnak": 8})
    with pytest.raises(ConfigError, match=r"unknown setting 'lora_rnak' \(did you mean --lora_rank\?\)"):
        parse("sft", [path])


def test_unknown_flag_suggests_the_right_name():
    with pytest.raises(TailorkitError, match=r"did you mean --learning_rate\?"):
        parse("sft", ["--model", "m", "--dataset", "d", "--learning_rat", "1e-4"])
    assert main(["sft", "--model", "m", "--dataset", "d", "--num_train_epoch", "1"]) == 2


def test_wrong_type_names_the_setting():
    with pytest.raises(ConfigError, match="lora_rank: expected int"):
        parse("sft", ["--model", "m", "--dataset", "d", "--lora_rank", "big"])


def test_help_lists_every_argument_and_only_real_verbs(capsys):
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    text = capsys.readouterr().out
    for name in concern_fields(SftConfig):
        assert f"--{name}" in text, name
    assert "--tuner_type" in text
    main(["--help"])
    top = capsys.readouterr().out
    for verb in ("sft", "pt", "demo", "tiny"):
        assert verb in top


def test_issue_names_are_accepted():
    names = ("model model_type dataset val_dataset split_dataset_ratio train_type torch_dtype attn_impl "
             "num_train_epochs max_steps learning_rate per_device_train_batch_size gradient_accumulation_steps "
             "max_length output_dir gradient_checkpointing gradient_checkpointing_kwargs lora_rank lora_alpha "
             "lora_dropout target_modules modules_to_save save_strategy save_steps save_total_limit logging_steps "
             "seed report_to system resume_from_checkpoint dataloader_num_workers warmup_ratio lr_scheduler_type "
             "weight_decay").split()
    missing = [n for n in names if n not in concern_fields(SftConfig)]
    assert not missing


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("verb,name", [("sft", "args_sft_before_issue11.yaml"),
                                       ("rlhf", "args_grpo_before_issue11.yaml"),
                                       ("rlhf", "args_simpo_before_issue11.yaml")])
def test_args_yaml_written_before_the_config_split_reads_back_unchanged(verb, name):
    # Written by the code before config/args.py became config/train.py + config/rlhf.py (RlhfArgs split into
    # RlhfArgs, PreferenceArgs, GrpoArgs): every flat key keeps its name and meaning.
    saved = yaml.safe_load((FIXTURES / name).read_text())
    flat = parse(verb, [str(FIXTURES / name)]).flat()
    assert {k: flat.get(k, "<missing>") for k in saved} == saved  # settings added since then take their defaults


def test_rlhf_groups_split_the_algorithm_settings():
    cfg = parse("rlhf", ["--rlhf_type", "grpo", "--model", "m", "--dataset", "d.jsonl", "--num_generations", "3",
                         "--label_smoothing", "0.1", "--beta", "0.02"])
    assert (cfg.rlhf.rlhf_type, cfg.rlhf.beta) == ("grpo", 0.02)
    assert cfg.grpo.num_generations == 3 and cfg.preference.label_smoothing == 0.1
    assert set(concern_fields(type(cfg))) >= {"num_generations", "label_smoothing", "rlhf_type", "ref_model"}


def test_rlhf_help_lists_every_flag(capsys):
    from tailorkit.config.rlhf import RlhfConfig

    with pytest.raises(SystemExit):
        main(["rlhf", "--help"])
    text = capsys.readouterr().out
    missing = [name for name in concern_fields(RlhfConfig) if f"--{name}" not in text]
    assert not missing
    # every flag that existed before the split (the 104 keys of an rlhf args.yaml written then) is still there
    before = set(yaml.safe_load((FIXTURES / "args_simpo_before_issue11.yaml").read_text()))
    assert len(before) == 104 and before <= set(concern_fields(RlhfConfig))


@pytest.mark.parametrize("flag", ["streaming", "packing", "padding_free"])
def test_rlhf_refuses_sft_only_batching_flags(flag):
    with pytest.raises(ConfigError, match=f"--{flag} applies to sft and pt only"):
        parse("rlhf", ["--model", "m", "--dataset", "d.jsonl", f"--{flag}", "true", "--max_steps", "2"])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_yaml_zero_stage_maps_to_the_deepspeed_preset_and_runs_without_a_gpu(tmp_path, stage):
    path = _yaml(tmp_path, f"model: m\ndataset: d.jsonl\nparallel_config: {{zero_stage: {stage}}}\n")
    assert parse("sft", [path]).dist.deepspeed == f"zero{stage}"
