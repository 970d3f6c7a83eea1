"""Crash safety: kills at chosen points resume to bitwise-identical weights; atomic saves; config-change refusal."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tailorkit.cli import parse
from tailorkit.data.dataset import encode_all, load_conversations
from tailorkit.errors import CheckpointError, ConfigError
from tailorkit.run_files import LAST, STAGING_DIR
from tailorkit.train.checkpoint import last_checkpoint, rotate
from tailorkit.train.sft import sft
from tailorkit.train.trainer import Trainer

CHILD = Path(__file__).with_name("resume_child.py")
SRC = Path(__file__).resolve().parents[2] / "src"
ADAPTER = "adapter_model.safetensors"


def write_data(path: Path, offset: int = 0) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"what is {i} plus {i + offset}?"},
                          {"role": "assistant", "content": f"{2 * i + offset}"}]} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    # 16 samples, batch 2, accumulation 2: 4 optimizer steps per epoch, 8 in all; dropout exercises the RNG.
    return ["--model", str(model), "--dataset", str(data), "--output_dir", str(out), "--num_train_epochs", "2",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--save_steps", "2",
            "--logging_steps", "1", "--torch_dtype", "float32", "--max_length", "64", "--lora_dropout", "0.1",
            "--seed", "7", *extra]


def run_child(hook: str, step: int, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, str(CHILD), hook, str(step), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def pointed(out: Path) -> str:
    return last_checkpoint(out).name


@pytest.fixture(scope="module")
def reference(tiny_text_dir, tmp_path_factory):
    """An uninterrupted run: its data file, output folder and final adapter weights."""
    root = tmp_path_factory.mktemp("reference")
    data = write_data(root / "data.jsonl")
    result = sft(parse("sft", train_args(tiny_text_dir, data, root / "out")))
    return data, root / "out", load_file(result.final_dir / ADAPTER), result


@pytest.mark.slow
def test_killed_at_several_points_resumes_to_bitwise_identical_weights(tiny_text_dir, tmp_path, reference):
    data, _, expected, _ = reference
    out = tmp_path / "run"
    args = train_args(tiny_text_dir, data, out)
    resume = [*args, "--resume_from_checkpoint", "last"]

    r = run_child("sigterm_at_step", 3, args)  # preemption: finish step 3, save it, exit
    assert r.returncode == 2, r.stderr[-3000:]
    assert "SIGTERM received" in r.stderr and "stopped by SIGTERM at step 3" in r.stderr
    assert pointed(out) == "checkpoint-3"

    r = run_child("kill_mid_save", 4, resume)  # SIGKILL with checkpoint-4 half written
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert (out / STAGING_DIR / "checkpoint-4" / ADAPTER).is_file()  # it did die half-way through the save
    assert not (out / "checkpoint-4").exists() and pointed(out) == "checkpoint-3"

    r = run_child("kill_before_last", 4, resume)  # SIGKILL between the rename and the pointer switch
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert (out / "checkpoint-4" / "trainer_state.json").is_file() and pointed(out) == "checkpoint-3"

    r = run_child("kill_mid_step", 7, resume)  # SIGKILL between the micro-batches of step 7 (second epoch)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert pointed(out) == "checkpoint-6" and not (out / "checkpoint-7").exists()

    result = sft(parse("sft", resume))
    got = load_file(result.final_dir / ADAPTER)
    assert got.keys() == expected.keys()
    unequal = [k for k in expected if not (got[k] == expected[k]).all()]
    assert not unequal, f"resumed weights differ from the uninterrupted run in {unequal}"
    assert result.summary.steps == 8 and result.summary.status == "completed"
    assert result.summary.tokens_seen == reference[3].summary.tokens_seen  # the count survives the resumes


def test_full_disk_while_saving_keeps_previous_checkpoint(tiny_text_dir, tmp_path, monkeypatch, reference):
    data = reference[0]
    out = tmp_path / "run"
    original = Trainer._save_optimizer_and_scheduler

    def disk_full_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", disk_full_at_step_4)
    with pytest.raises(CheckpointError, match=r"checkpoint-4 .*disk .*full.*checkpoint-2 is intact"):
        sft(parse("sft", train_args(tiny_text_dir, data, out)))
    assert pointed(out) == "checkpoint-2"
    assert not (out / "checkpoint-4").exists() and not (out / STAGING_DIR).exists()
    kept = {p.name for p in (out / "checkpoint-2").iterdir()}
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", ADAPTER} <= kept
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "failed: CheckpointError" and summary["last_checkpoint"].endswith("checkpoint-2")


def test_resume_with_changed_config_is_refused_with_the_differences(tiny_text_dir, tmp_path, reference):
    data, ref_out, _, _ = reference
    ckpt = str(ref_out / "checkpoint-4")
    changed = train_args(tiny_text_dir, data, tmp_path / "a", "--lora_rank", "4",
                         "--per_device_train_batch_size", "4", "--resume_from_checkpoint", ckpt)
    with pytest.raises(ConfigError) as e:
        sft(parse("sft", changed))
    assert "lora_rank: checkpoint has 8, now 4" in str(e.value)
    assert "per_device_train_batch_size: checkpoint has 2, now 4" in str(e.value)
    assert "output_dir" not in str(e.value)  # a setting that does not change the result may change

    weights_only = train_args(tiny_text_dir, data, tmp_path / "w", "--resume_from_checkpoint",
                              str(ref_out / "checkpoint-final"))
    with pytest.raises(ConfigError, match="not a training checkpoint.*--resume_only_model"):
        sft(parse("sft", weights_only))

    same_path = train_args(tiny_text_dir, data, tmp_path / "b", "--resume_from_checkpoint", ckpt)
    original = data.read_text()
    write_data(data, offset=1)  # same settings, same file name, other content
    try:
        with pytest.raises(ConfigError, match=r"result:\n  training data: the encoded samples differ") as e:
            sft(parse("sft", same_path))
    finally:
        data.write_text(original)
    assert "dataset:" not in str(e.value)


def test_resume_only_model_starts_a_new_run_from_the_weights(tiny_text_dir, tmp_path, reference):
    data, ref_out, _, _ = reference
    ckpt = ref_out / "checkpoint-final"  # weights only: accepted with --resume_only_model
    # A changed schedule is allowed here; learning rate 0 keeps the loaded weights exactly as they were.
    args = train_args(tiny_text_dir, data, tmp_path / "c", "--max_steps", "1", "--learning_rate", "0",
                      "--resume_from_checkpoint", str(ckpt), "--resume_only_model")
    result = sft(parse("sft", args))
    assert result.summary.steps == 1  # a fresh schedule, not step 5 of the old one
    start, end = load_file(ckpt / ADAPTER), load_file(result.final_dir / ADAPTER)
    assert start.keys() == end.keys() and all((start[k] == end[k]).all() for k in start)
    assert any(a.startswith("zero_lr") for a in result.summary.alarms)


def test_last_pointer_and_rotation_keep_newest_best_and_last(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
    os.symlink("checkpoint-4", tmp_path / LAST)
    removed = rotate(tmp_path, 1, keep={tmp_path / "checkpoint-2"})  # best = 2, last = 4, newest = 8
    assert sorted(p.name for p in removed) == ["checkpoint-6"]
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint-2", "checkpoint-4", "checkpoint-8", LAST}


def test_run_summary_counts_steps_tokens_and_checkpoints(reference):
    data, out, _, result = reference
    s = result.summary
    encoded, _ = encode_all(load_conversations([str(data)]), result.bundle.processor, max_length=64,
                            truncation="raise")
    assert s.status == "completed" and s.steps == 8 and s.max_steps == 8
    assert s.tokens_seen == 2 * sum(len(x) for x in encoded)  # two epochs, padding not counted
    assert [Path(c).name for c in s.checkpoints] == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert pointed(out) == "checkpoint-8" and s.alarms == []
    assert json.loads((out / "run_summary.json").read_text())["steps"] == 8
