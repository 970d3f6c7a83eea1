"""ms-swift users' flags and values, each with an effect that can fail: -c, the help's list of accepted spellings,
--report_to (tensorboard event files hold the loss; wandb offline; missing trackers named), --save_strategy epoch
and steps, --save_only_model, --optim, --warmup_steps, TrainingArguments fields passed through, --model_kwargs,
--attn_impl flash_attn, --use_hf, --template, the YAML's model name and category, flat parallel sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import hide_package, text_chat_rows, write_jsonl
from tailorkit.cli import main, parse
from tailorkit.config import SftConfig, build_config
from tailorkit.errors import ConfigError, ModelError
from tailorkit.train.sft import sft


def _cfg(model_dir, tmp_path, **over) -> SftConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp_path / "chat.jsonl", text_chat_rows(4))
    values = {"model": str(model_dir), "dataset": [str(data)], "torch_dtype": "float32", "max_steps": 2,
              "per_device_train_batch_size": 2, "logging_steps": 1, "save_strategy": "no", "learning_rate": 1e-3,
              "output_dir": str(tmp_path / "out"), "max_length": 64, **over}
    return build_config(SftConfig, values)


def _argv(**flags) -> list[str]:
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))]


def test_help_lists_the_ms_swift_spellings(capsys):
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for spelling in ("-c FILE (= --config)", "--tuner_type (= --train_type)",
                     "--custom_register_path (= --external_plugins)", "--attn_impl flash_attn (= flash_attention_2)",
                     "--model_type multimodal|text (= --model_category)", "--fp16/--bf16 true",
                     "TrainingArguments field", "pretrained_model_path with model: NAME (= --model_alias)",
                     "parallel_config: {zero_stage: N} (= --deepspeed zeroN)", "NPROC_PER_NODE=N"):
        assert spelling in text, spelling


def test_c_is_the_config_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: m\ndataset: d.jsonl\nlora_rank: 4\n")
    assert parse("sft", ["-c", str(path)]) == parse("sft", ["--config", str(path)]) == parse("sft", [str(path)])
    assert parse("sft", ["-c", str(path), "--lora_rank", "16"]).tuner.lora_rank == 16  # flags still win


def _event_scalars(folder: Path, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values += [e.value for e in acc.Scalars(tag)]
    return values


@pytest.mark.slow
def test_report_to_tensorboard_writes_the_loss_under_the_output_dir(tiny_text_dir, tmp_path):
    result = sft(_cfg(tiny_text_dir, tmp_path, report_to=["tensorboard"]))
    logged = [r["loss"] for r in result.log_history if "loss" in r]
    written = _event_scalars(result.output_dir, "train/loss")
    assert len(written) == len(logged) == 2
    assert written == pytest.approx(logged, rel=1e-4)


@pytest.mark.slow
def test_report_to_wandb_offline_writes_a_local_run(tiny_text_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's choice; tests never reach the network
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    try:
        sft(_cfg(tiny_text_dir, tmp_path, report_to=["wandb"]))
    finally:
        wandb.teardown()  # stop wandb's background service now, not when pytest exits
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


@pytest.mark.parametrize("tracker, package, how", [("tensorboard", "tensorboard", "tailorkit[track]"),
                                                   ("wandb", "wandb", "tailorkit[track]"),
                                                   ("swanlab", "swanlab", "conflict with the pinned protobuf")])
def test_a_missing_tracker_is_named_with_its_install(monkeypatch, tracker, package, how):
    hide_package(monkeypatch, package)
    hide_package(monkeypatch, "tensorboardX") if tracker == "tensorboard" else None
    with pytest.raises(ConfigError, match=f"report_to {tracker} needs the {package} package") as err:
        parse("sft", ["--model", "m", "--dataset", "d", "--report_to", tracker])
    assert how in str(err.value)
    with pytest.raises(ConfigError, match="not a tracker transformers knows"):
        parse("sft", ["--model", "m", "--dataset", "d", "--report_to", "tensorbored"])


def _checkpoints(out: Path) -> list[str]:
    return sorted((p.name for p in out.glob("checkpoint-[0-9]*")), key=lambda n: int(n.split("-")[1]))


@pytest.mark.slow
def test_save_strategy_epoch_and_steps_save_the_right_checkpoints(tiny_text_dir, tmp_path):
    # 4 rows, batch 2: 2 steps per epoch
    epochs = sft(_cfg(tiny_text_dir, tmp_path / "e", max_steps=-1, num_train_epochs=2, save_strategy="epoch"))
    assert _checkpoints(epochs.output_dir) == ["checkpoint-2", "checkpoint-4"]
    steps = sft(_cfg(tiny_text_dir, tmp_path / "s", max_steps=3, save_strategy="steps", save_steps=1,
                     save_only_model=True))
    assert _checkpoints(steps.output_dir) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert (epochs.output_dir / "checkpoint-2" / "optimizer.pt").is_file()
    assert not any((steps.output_dir / c / "optimizer.pt").exists() for c in _checkpoints(steps.output_dir))
    assert (steps.output_dir / "checkpoint-3" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_optim_chooses_the_optimizer_class(tiny_text_dir, tmp_path):
    from transformers.optimization import Adafactor

    from tailorkit.train.recipe import prepare

    chosen = {}
    for optim in ("adafactor", "adamw_torch"):
        run = prepare(_cfg(tiny_text_dir, tmp_path / optim, optim=optim, warmup_steps=3), "sft")
        chosen[optim] = type(run.trainer.create_optimizer())
        assert run.trainer.args.warmup_steps == 3
    assert chosen["adafactor"] is Adafactor and chosen["adamw_torch"] is torch.optim.AdamW


def test_trainer_args_pass_through_validated(tmp_path):
    from tailorkit.train.trainer import training_arguments

    path = tmp_path / "cfg.yaml"
    path.write_text("model: m\ndataset: d.jsonl\ntraining_args: {adam_beta2: 0.95, neftune_noise_alpha: 5}\n")
    cfg = parse("sft", [str(path), "--logging_first_step", "--output_dir", str(tmp_path / "o")])
    assert cfg.train.trainer_args == {"adam_beta2": 0.95, "neftune_noise_alpha": 5.0, "logging_first_step": True}
    args = training_arguments(cfg, has_eval=False)
    assert (args.adam_beta2, args.neftune_noise_alpha, args.logging_first_step) == (0.95, 5.0, True)
    for argv, message in ((["--remove_unused_columns", "true"], "tailorkit sets it itself"),
                          (["--logging_strategy", "sometimes"], "transformers refuses them"),
                          (["--trainer_args", '{"learning_rate": 1}'], "give them as --learning_rate"),
                          (["--optim", "adamw_tpyo"], "not a transformers optimizer"),
                          (["--lr_scheduler_type", "cosine_wiggle"], "not a transformers schedule")):
        with pytest.raises(ConfigError, match=message):
            parse("sft", ["--model", "m", "--dataset", "d", *argv])


def test_model_kwargs_reach_from_pretrained(tiny_text_dir):
    from tailorkit.config.train import ModelArgs
    from tailorkit.models.load import load_bundle

    bundle = load_bundle(ModelArgs(model=str(tiny_text_dir), model_kwargs='{"attention_dropout": 0.125}'))
    assert bundle.model.config.attention_dropout == 0.125
    with pytest.raises(ModelError, match="check --model_kwargs"):
        load_bundle(ModelArgs(model=str(tiny_text_dir), model_kwargs={"no_such_argument": 1}))
    with pytest.raises(ConfigError, match="model_kwargs 'dtype' is set by --torch_dtype"):
        ModelArgs(model="m", model_kwargs={"dtype": "float16"})


def test_attn_impl_takes_ms_swift_spelling_and_names_the_gpu_need(monkeypatch):
    from tailorkit.config.train import ModelArgs

    with pytest.raises(ConfigError, match="attn_impl flash_attention_2 runs on a CUDA GPU"):
        parse("sft", ["--model", "m", "--dataset", "d", "--attn_impl", "flash_attn"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    hide_package(monkeypatch, "flash_attn")
    with pytest.raises(ConfigError, match="needs the flash_attn package"):
        ModelArgs(model="m", attn_impl="flash_attn")
    assert ModelArgs(model="m", attn_impl="sdpa").attn_impl == "sdpa"


def test_use_hf_is_accepted_and_modelscope_refused():
    assert parse("sft", ["--model", "m", "--dataset", "d", "--use_hf", "true"]).model.use_hf is True
    with pytest.raises(ConfigError, match="ModelScope"):
        parse("sft", ["--model", "m", "--dataset", "d", "--use_hf", "false"])


def test_template_uses_another_familys_patch(tiny_text_dir):
    from tailorkit.config.train import ModelArgs
    from tailorkit.data.encode import encode
    from tailorkit.data.formats import parse_row
    from tailorkit.models.load import load_bundle

    row = parse_row(text_chat_rows(1)[0])
    own = load_bundle(ModelArgs(model=str(tiny_text_dir))).processor
    phi3 = load_bundle(ModelArgs(model=str(tiny_text_dir), template="phi3")).processor
    assert "<|im_start|>user" in own.decode(encode(row, own).input_ids)
    assert "<|user|>" in phi3.decode(encode(row, phi3).input_ids)
    with pytest.raises(ConfigError, match="--template nosuch: no such template; families with a template patch"):
        load_bundle(ModelArgs(model=str(tiny_text_dir), template="nosuch"))


def test_yaml_model_name_and_category_are_checked_against_the_checkpoint(tiny_text_dir, tmp_path, capsys):
    from tailorkit.config.train import ModelArgs
    from tailorkit.models.load import load_bundle

    load_bundle(ModelArgs(model=str(tiny_text_dir), model_alias="my-chat-model", model_type="text"))
    assert "model my-chat-model (a name tailorkit does not know: recorded only)" in capsys.readouterr().out
    with pytest.raises(ModelError, match="'Qwen2.5-VL-7B-Instruct' is a qwen2_5_vl model, but .* holds a qwen2"):
        load_bundle(ModelArgs(model=str(tiny_text_dir), model_alias="Qwen2.5-VL-7B-Instruct"))
    with pytest.raises(ModelError, match="model_category multimodal .* is a text-only model"):
        load_bundle(ModelArgs(model=str(tiny_text_dir), model_type="multimodal"))
    path = tmp_path / "cfg.yaml"
    path.write_text(f"model: Qwen2.5-7B-Instruct\npretrained_model_path: {tiny_text_dir}\ndataset: d.jsonl\n")
    cfg = parse("sft", [str(path)])
    assert (cfg.model.model, cfg.model.model_alias) == (str(tiny_text_dir), "Qwen2.5-7B-Instruct")
    assert yaml.safe_load(yaml.safe_dump(cfg.flat()))["model_alias"] == "Qwen2.5-7B-Instruct"  # args.yaml records it


@pytest.mark.parametrize("size, ok", [(1, True), (2, False)])
def test_flat_parallel_sizes(tmp_path, size, ok):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"model: m\ndataset: d.jsonl\ntensor_parallel_size: {size}\npipeline_parallel_size: 1\n")
    if ok:
        parse("sft", [str(path)])
        return
    with pytest.raises(ConfigError, match=r"cfg.yaml: tensor_parallel_size=2: .*--deepspeed zero3 or --fsdp"):
        parse("sft", [str(path)])


def test_fp16_flag_sets_the_dtype_and_bf16_runs_on_cpu():
    assert parse("sft", ["--model", "m", "--dataset", "d", "--bf16", "true"]).model.torch_dtype == "bfloat16"
    with pytest.raises(ConfigError, match="float16 training \\(fp16\\) needs a CUDA GPU"):
        parse("sft", ["--model", "m", "--dataset", "d", "--fp16", "true"])
    assert json.loads(json.dumps(parse("sft", ["--model", "m", "--dataset", "d", "--fp16", "false"]).flat()))
