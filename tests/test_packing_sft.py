"""End to end: `tailorkit sft` with --packing, --padding_free and --group_by_length (eval stays padded)."""

from __future__ import annotations

import json

import pytest

from tailorkit.cli import parse
from tailorkit.train.sft import sft

WORDS = "the quick brown fox jumps over a lazy dog".split()


def _write(path, n: int) -> str:
    with open(path, "w") as f:
        for i in range(n):
            q = " ".join(WORDS[: 2 + i % 7])
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": WORDS[i % 9]}]}) + "\n")
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--packing", "true", "--packing_length", "128", "--max_length", "128"], ["--padding_free", "true"],
                                   ["--group_by_length", "true"]])
def test_sft_trains_with_packing_flags(tiny_text_dir, tmp_path, flags, capsys):
    train, val = _write(tmp_path / "train.jsonl", 12), _write(tmp_path / "val.jsonl", 3)
    cfg = parse("sft", ["--model", str(tiny_text_dir), "--dataset", train, "--val_dataset", val,
                        "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--save_steps", "2", "--logging_steps", "1",
                        "--per_device_train_batch_size", "2", *flags])  # default train_type: lora
    result = sft(cfg)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in result.log_history if "eval_loss" in h]
    assert losses and evals and all(x == x and x > 0 for x in losses + evals)
    out = capsys.readouterr().out
    if "--packing" in flags:
        assert "packed 12 samples into" in out
    if "--padding_free" in flags:
        assert "padding-free batches" in out
