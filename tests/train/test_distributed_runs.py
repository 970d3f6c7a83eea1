"""Distributed runs end to end on 2 CPU processes (gloo): mixed image/text batches never hang under ZeRO-3 or
FSDP2, ZeRO-3 resumes bitwise after a SIGKILL, the tutorials' launch commands run, and the error a user can
force with re-entrant checkpointing says what to change."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tailorkit.demo.shapes import write_split

from dist_helpers import child_env, final_weights, free_port, launch_runs, torchrun, zero3_config
from helpers import text_chat_rows, write_jsonl


def mixed_rows(root, n: int):
    """Rows alternating image (even) and text-only (odd): sequential sampling gives rank 0 the images."""
    images = [json.loads(line) for line in write_split(root, "img", n, seed=5).read_text().splitlines()]
    texts = text_chat_rows(n)
    return write_jsonl(root / "mixed.jsonl", [row for pair in zip(images, texts) for row in pair])


def base_args(model, data, out, *extra: str) -> list[str]:
    return ["--model", str(model), "--dataset", str(data), "--output_dir", str(out), "--torch_dtype", "float32",
            "--per_device_train_batch_size", "1", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant",
            "--logging_steps", "1", "--max_length", "256", "--seed", "11", *extra]


@pytest.mark.slow
def test_mixed_image_and_text_ranks_finish_and_train_the_vision_tower(tiny_vl_dir, tmp_path):
    data = mixed_rows(tmp_path, 4)
    common = ("--train_type", "full", "--freeze_vit", "false", "--gradient_checkpointing", "true",
              "--max_steps", "3", "--save_strategy", "no")
    runs = [{"name": f"mixed_{engine}", "sequential": True,
             "argv": base_args(tiny_vl_dir, data, tmp_path / engine, *common, f"--{flag}", value)}
            for engine, flag, value in (("zero3", "deepspeed", "zero3"), ("fsdp", "fsdp", "full_shard"))]
    proc = launch_runs(tmp_path, runs, timeout=420)  # a hang fails here instead of blocking CI
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    base = load_file(tiny_vl_dir / "model.safetensors")
    for engine in ("zero3", "fsdp"):
        trained = final_weights(tmp_path / engine)
        vision = [k for k in base if k.startswith("visual.") and ".merger." not in k]  # checkpoint names
        assert vision and all(not torch.equal(trained[k], base[k]) for k in vision), engine


def ckpt_args(model, data, out, *extra: str) -> list[str]:
    # 16 rows, 1 x 2 accumulation x 2 ranks: 4 steps per epoch; LoRA dropout draws from every rank's RNG
    return base_args(model, data, out, "--train_type", "lora", "--lora_dropout", "0.1",
                     "--deepspeed", str(zero3_config(Path(data).parent)),
                     "--gradient_accumulation_steps", "2", "--max_steps", "4", "--save_steps", "2", *extra)


@pytest.mark.slow
def test_zero3_killed_mid_step_resumes_to_bitwise_identical_weights(tiny_text_dir, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", text_chat_rows(16))
    # one launch: the uninterrupted run, then the same run SIGKILLed by every rank mid-step 3
    killed = launch_runs(tmp_path, [{"name": "whole", "argv": ckpt_args(tiny_text_dir, data, tmp_path / "whole")},
                                    {"name": "killed", "kill_at_step": 3,
                                     "argv": ckpt_args(tiny_text_dir, data, tmp_path / "run")}])
    assert (tmp_path / "whole.json").is_file(), (killed.stdout + killed.stderr)[-6000:]
    assert killed.returncode != 0 and (tmp_path / "run" / "last").resolve().name == "checkpoint-2"
    assert not (tmp_path / "run" / "checkpoint-final").exists()
    ckpt = tmp_path / "run" / "checkpoint-2"
    assert list(ckpt.glob("global_step2/*optim_states.pt")) and (ckpt / "rng_state_1.pth").is_file()
    resumed = launch_runs(tmp_path, [{"name": "resumed", "argv": ckpt_args(
        tiny_text_dir, data, tmp_path / "run", "--resume_from_checkpoint", "last")}])
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-6000:]
    expected, got = final_weights(tmp_path / "whole"), final_weights(tmp_path / "run")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    manifest = json.loads((tmp_path / "whole" / "trainable.json").read_text())
    assert manifest["trainable"] > 0 and manifest["param_groups"][0]["parameters"] == manifest["trainable"]


@pytest.mark.slow
def test_tutorial_nproc_per_node_command_relaunches_under_torchrun(family_dirs, tmp_path):
    # ms-swift's Phi-4-multimodal tutorial: NPROC_PER_NODE=2 CUDA_VISIBLE_DEVICES=0,1 swift sft --model ...
    # --train_type dummy --ddp_find_unused_parameters true (the shipped vision-lora trains, speech-lora idles)
    data = write_split(tmp_path, "img", 4, seed=6)
    env = child_env(NPROC_PER_NODE="2", CUDA_VISIBLE_DEVICES="0,1", MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(free_port()))
    cmd = [sys.executable, "-m", "tailorkit", "sft", *base_args(
        family_dirs("phi4_multimodal"), data, tmp_path / "out", "--train_type", "dummy",
        "--ddp_find_unused_parameters", "true", "--max_steps", "2", "--save_strategy", "no", "--max_length", "1024")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    errors = "\n".join(line for line in output.splitlines() if "Error" in line or "error:" in line)
    assert proc.returncode == 0, f"{errors[:3000]}\n...\n{output[-5000:]}"  # every rank's error, not only the last
    assert "[tailorkit] launching: -m torch.distributed.run --nproc_per_node 2" in output
    assert output.count("[tailorkit] world size 2 (1 node), backend gloo, engine ddp") == 1  # rank 0 only
    assert output.count("[tailorkit] run summary: completed") == 1
    for folder, moves in (("vision-lora", True), ("speech-lora", False)):  # image rows route to the vision LoRA
        shipped = load_file(family_dirs("phi4_multimodal") / folder / "adapter_model.safetensors")
        saved = load_file(tmp_path / "out" / "checkpoint-final" / folder / "adapter_model.safetensors")
        assert shipped.keys() == saved.keys()
        assert any(not torch.equal(shipped[k], saved[k]) for k in shipped) == moves, folder


@pytest.mark.slow
def test_forced_reentrant_checkpointing_with_find_unused_names_the_fix(tiny_text_dir, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", text_chat_rows(8))
    args = base_args(tiny_text_dir, data, tmp_path / "out", "--train_type", "lora", "--gradient_checkpointing", "true",
                     "--gradient_checkpointing_kwargs", '{"use_reentrant": true}', "--max_steps", "2",
                     "--save_strategy", "no", "--ddp_find_unused_parameters", "true")
    proc = subprocess.run(torchrun("-m", "tailorkit", "sft", *args), capture_output=True, text=True, timeout=300,
                          env=child_env(), cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "mark a variable ready only once" in output
    assert "Fix: keep the default --gradient_checkpointing_kwargs '{\"use_reentrant\": false}'" in output


@pytest.mark.slow
def test_accelerate_launch_with_reentrant_checkpointing_runs_on_a_static_graph(tiny_text_dir, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", text_chat_rows(8))
    args = base_args(tiny_text_dir, data, tmp_path / "out", "--train_type", "lora", "--gradient_checkpointing", "true",
                     "--gradient_checkpointing_kwargs", '{"use_reentrant": true}', "--max_steps", "2",
                     "--save_strategy", "no")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(free_port()), "-m", "tailorkit", "sft", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=child_env(), cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert output.count("[tailorkit] world size 2 (1 node), backend gloo, engine ddp") == 1
    assert (tmp_path / "out" / "checkpoint-final" / "adapter_model.safetensors").is_file()
