"""The ms-swift tutorials' own YAML and commands (/work/shared/tutorials.md), `swift` replaced by `tailorkit`, on
tiny models of the right family on CPU: the MiniCPM-V-4 YAML workflow and Phi-4-multimodal's single-process
`--train_type dummy` command. Its NPROC_PER_NODE=2 command is tested in train/test_distributed_runs.py, its DeepSpeed one in
train/test_swift_tutorials_distributed.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from helpers import ParamChangeRecorder
from tailorkit.cli import main, parse
from tailorkit.train.sft import sft

# Tutorial 5, as printed; only the checkpoint path is a placeholder.
MINICPMV_YAML = """\
model: MiniCPM-V-4
model_type: multimodal
pretrained_model_path: /path/to/minicpm-v4-checkpoint
train_type: qlora
lora_rank: 64
lora_alpha: 128
lora_dropout: 0.05
dataset:
  type: jsonl
  path: ./data/multimodal_finetune.jsonl
  pack_length: 2048
training_args:
  per_device_train_batch_size: 2
  gradient_accumulation_steps: 8
  learning_rate: 2e-5
  num_train_epochs: 3
  logging_steps: 10
  save_strategy: epoch
  fp16: true
  optim: adamw_torch
parallel_config:
  tensor_parallel_size: 2
  pipeline_parallel_size: 1
  zero_stage: 3
"""
COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0)}


@pytest.fixture
def minicpmv_workdir(tmp_path, monkeypatch, family_dirs):
    """A working folder laid out as the tutorial's: ./data/multimodal_finetune.jsonl with image paths."""
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (28 + 28 * (i % 2), 28), rgb).save(data / f"{name}.png")  # 28x28 and sliced 56x28
        rows.append({"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                                  {"role": "assistant", "content": name}], "images": [f"{name}.png"]})
    (data / "multimodal_finetune.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    return tmp_path, family_dirs("minicpmv")


def _yaml(folder, model_dir, *edits: tuple[str, str], extra: str = "") -> str:
    text = MINICPMV_YAML.replace("/path/to/minicpm-v4-checkpoint", str(model_dir))
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    path = folder / "config_train_minicpmv4.yaml"
    path.write_text(text + extra)
    return str(path)


# What this CPU cannot do: fp16 (needs CUDA) and tensor parallelism; zero_stage: 3 stays (DeepSpeed ZeRO-3 runs
# on CPU as a world of one process).
ON_CPU = (("fp16: true", "fp16: false"), ("tensor_parallel_size: 2", "tensor_parallel_size: 1"))


def _refusal(capsys, argv) -> str:
    """The one-line error of a refused command: exit status 2, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


def test_minicpmv_yaml_verbatim_is_refused_on_cpu_with_the_reason(minicpmv_workdir, capsys):
    folder, model_dir = minicpmv_workdir
    err = _refusal(capsys, ["sft", "-c", _yaml(folder, model_dir)])
    assert "tensor_parallel_size=2: tensor parallelism is not supported" in err
    assert "--deepspeed zero3 or --fsdp full_shard" in err
    err = _refusal(capsys, ["sft", "-c", _yaml(folder, model_dir, *ON_CPU[1:])])  # fp16 left on
    assert "float16 training (fp16) needs a CUDA GPU" in err and "--torch_dtype bfloat16 or float32" in err
    assert not (folder / "output").exists()


def test_minicpmv_yaml_without_trust_remote_code_says_what_to_add(minicpmv_workdir, capsys):
    folder, model_dir = minicpmv_workdir
    err = _refusal(capsys, ["sft", "-c", _yaml(folder, model_dir, *ON_CPU)])
    assert "built by its own Python code" in err and "--trust_remote_code true" in err
    assert "trust_remote_code: true" in err  # the YAML spelling too


def test_minicpmv_yaml_keys_map_to_settings(minicpmv_workdir):
    folder, model_dir = minicpmv_workdir
    cfg = parse("sft", ["-c", _yaml(folder, model_dir, *ON_CPU, extra="trust_remote_code: true\n")])
    assert (cfg.model.model, cfg.model.model_alias, cfg.model.model_category) == (str(model_dir), "MiniCPM-V-4",
                                                                                  "multimodal")
    assert cfg.model.model_type is None and cfg.tuner.train_type == "qlora" and cfg.tuner.lora_rank == 64
    assert cfg.data.packing and cfg.data.packing_length == 2048
    assert cfg.data.dataset == ["./data/multimodal_finetune.jsonl"]
    assert (cfg.train.optim, cfg.train.save_strategy, cfg.train.num_train_epochs) == ("adamw_torch", "epoch", 3)
    assert cfg.model.torch_dtype == "auto" and cfg.dist.deepspeed == "zero3"  # parallel_config.zero_stage: 3


@pytest.mark.slow
def test_minicpmv_yaml_trains_packed_qlora_under_zero3_on_the_tiny_model(minicpmv_workdir):
    folder, model_dir = minicpmv_workdir
    config = _yaml(folder, model_dir, *ON_CPU, extra="trust_remote_code: true\n")
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NPROC_PER_NODE")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    done = subprocess.run([sys.executable, "-m", "tailorkit", "sft", "-c", config], capture_output=True, text=True,
                          cwd=folder, timeout=600, env={**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    out = done.stdout
    assert "model MiniCPM-V-4 (family minicpmv)" in out
    assert "packed 3 samples into 1 rows" in out and "attention tailorkit_packed_sdpa" in out
    assert "engine deepspeed zero3" in out  # parallel_config.zero_stage: 3
    output = folder / "output"  # the YAML names no output_dir: the default, in the working folder
    saved = yaml.safe_load((output / "args.yaml").read_text())
    assert saved["train_type"] == "qlora" and saved["packing"] and saved["model_alias"] == "MiniCPM-V-4"
    assert saved["deepspeed"] == "zero3"
    epochs = sorted(p.name for p in output.glob("checkpoint-[0-9]*"))
    assert epochs == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]  # save_strategy epoch, 3 epochs of 1 step
    from safetensors.torch import load_file

    first, last = (load_file(output / c / "adapter_model.safetensors") for c in ("checkpoint-1", "checkpoint-final"))
    assert first.keys() == last.keys() and all(".llm.model." in k for k in first)  # LoRA on the inner LLM only
    assert all(t.shape[0] == 64 or t.shape[1] == 64 for t in last.values())  # gathered whole, rank 64
    assert any((first[k] - last[k]).abs().max() > 0 for k in first if "lora_B" in k)


# Tutorial 1, single process, as printed (paths filled in).
PHI4_COMMAND = ["--model", "MODEL", "--dataset", "DATA", "--train_type", "dummy", "--torch_dtype", "bfloat16",
                "--num_train_epochs", "5", "--learning_rate", "1e-4", "--gradient_accumulation_steps", "32",
                "--max_length", "32768", "--output_dir", "OUT", "--gradient_checkpointing_kwargs",
                '{"use_reentrant": false}']


@pytest.mark.slow
def test_phi4_multimodal_tutorial_command_trains_the_shipped_vision_lora(family_dirs, tmp_path):
    model_dir = family_dirs("phi4_multimodal")
    Image.new("RGB", (28, 28), (255, 0, 0)).save(tmp_path / "red.png")
    rows = [{"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "red"}],
             "images": ["red.png"]}] * 2
    (tmp_path / "dataset.json").write_text(json.dumps(rows))  # a .json file, as the tutorial's
    paths = {"MODEL": str(model_dir), "DATA": str(tmp_path / "dataset.json"), "OUT": str(tmp_path / "out")}
    argv = [paths.get(a, a) for a in PHI4_COMMAND]
    recorder = ParamChangeRecorder()
    result = sft(parse("sft", argv), callbacks=[recorder])  # `tailorkit sft ...` = parse + sft, plus a recorder
    assert result.log_history[-1]["step"] == 5  # 5 epochs of one (partial) accumulation window
    moved = {n for n, changed in recorder.changed.items() if changed}
    vision = {n for n in recorder.changed if ".vision-lora." in n}
    speech = {n for n in recorder.changed if ".speech-lora." in n}
    assert vision and speech
    assert moved == vision, f"image rows must move exactly the vision adapter: {sorted(moved ^ vision)[:4]}"
    for folder in ("vision-lora", "speech-lora"):
        assert (result.final_dir / folder / "adapter_model.safetensors").is_file()
