"""Flat in data size: peak memory does not grow with the number of rows, and a run imports only what it needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("scale_child.py")
SRC = Path(__file__).resolve().parents[2] / "src"
WORDS = "the quick brown fox jumps over a lazy dog red green blue yellow circle square triangle star".split()


def run_child(*argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, str(CHILD), *argv], capture_output=True, text=True, env=env, timeout=900)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(line[len("RESULT "):])
    assert result["code"] == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return result


def write_rows(path: Path, n: int) -> Path:
    """``n`` conversations of about 300 tokens each, all different."""
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(120)) + f" {i}?"
            f.write(json.dumps({"messages": [{"role": "user", "content": text},
                                             {"role": "assistant", "content": WORDS[i % len(WORDS)]}]}) + "\n")
    return path


def sft_args(model, data, out, cache) -> list[str]:
    return ["sft", "--model", str(model), "--dataset", str(data), "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "2", "--save_strategy", "no", "--torch_dtype", "float32",
            "--max_length", "512", "--dataset_cache_dir", str(cache), "--dataset_num_proc", "2",
            "--logging_steps", "1"]


@pytest.mark.slow
def test_peak_rss_of_20k_rows_within_10_percent_of_1k(tiny_text_dir, tmp_path):
    """Each run is its own process and reports its own peak. Before step 1 nothing per row stays in memory
    but compact arrays: 20x the rows (about 6 million tokens) add under 10% to the peak."""
    small = run_child(*sft_args(tiny_text_dir, write_rows(tmp_path / "1k.jsonl", 1000), tmp_path / "a",
                                tmp_path / "cache"))
    large = run_child(*sft_args(tiny_text_dir, write_rows(tmp_path / "20k.jsonl", 20000), tmp_path / "b",
                                tmp_path / "cache"))
    assert large["peak_rss_mib"] <= 1.10 * small["peak_rss_mib"], (small, large)


def test_a_lora_run_imports_no_quantization_rl_or_server_stack_and_help_imports_no_torch(tiny_text_dir, tmp_path):
    data = write_rows(tmp_path / "rows.jsonl", 8)
    trained = run_child(*sft_args(tiny_text_dir, data, tmp_path / "out", tmp_path / "cache"))
    assert {"torch", "transformers", "peft"} <= set(trained["imported"])
    assert not ({"bitsandbytes", "gptqmodel", "deepspeed", "trl", "fastapi", "uvicorn", "gradio", "datasets"}
                & set(trained["imported"]))
    helped = run_child("--help")
    assert helped["imported"] == []


@pytest.mark.slow
def test_images_are_decoded_in_data_loader_workers(tiny_vl_dir, tmp_path):
    """Nothing but token arrays before step 1; the workers decode and process each batch's images."""
    from PIL import Image

    from tailorkit.cli import parse
    from tailorkit.train.sft import sft

    for k, colour in enumerate(("red", "blue")):
        Image.new("RGB", (56 + 28 * k, 56), colour).save(tmp_path / f"{k}.png")
    rows = [{"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                          {"role": "assistant", "content": ("red", "blue")[i % 2]}], "images": [f"{i % 2}.png"]}
            for i in range(8)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = sft(parse("sft", ["--model", str(tiny_vl_dir), "--dataset", str(tmp_path / "data.jsonl"),
                               "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--torch_dtype", "float32",
                               "--per_device_train_batch_size", "2", "--dataloader_num_workers", "2",
                               "--save_strategy", "no", "--logging_steps", "1"]))
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert len(losses) == 2 and all(0 < x < 100 for x in losses)
    assert result.summary.tokens_seen > 4 * 8  # image tokens included
