"""A tiny VL model fine-tuned on the demo's task beats its base by a wide margin on held-out rows, as
`tailorkit eval --ckpt_dir ... --compare_base` reports it (numbers read back from report.json)."""

from __future__ import annotations

import pytest

from tailorkit.cli import main
from tailorkit.config import SftConfig, build_config
from tailorkit.demo.shapes import write_split
from tailorkit.eval.report import read_report
from tailorkit.train.sft import sft


@pytest.mark.slow
def test_finetuned_beats_base_on_held_out_rows(tiny_vl_dir, tmp_path, capsys):
    train = write_split(tmp_path / "data", "train", 400, seed=1)
    held_out = write_split(tmp_path / "data", "heldout", 40, seed=2, choices=True)
    sft(build_config(SftConfig, {
        "model": str(tiny_vl_dir), "dataset": [str(train)], "train_type": "full", "freeze_vit": False,
        "freeze_aligner": False, "torch_dtype": "float32", "num_train_epochs": 3, "learning_rate": 1e-3,
        "per_device_train_batch_size": 8, "warmup_ratio": 0.05, "weight_decay": 0.0, "save_strategy": "no",
        "max_length": 128, "logging_steps": 10, "output_dir": str(tmp_path / "run"), "seed": 1}))
    out = tmp_path / "eval"
    assert main(["eval", "--ckpt_dir", str(tmp_path / "run"), "--compare_base", "--eval_dataset", f"qa:{held_out}",
                 f"mcq:{held_out}", "--max_new_tokens", "8", "--eval_output_dir", str(out)]) == 0
    tuned, base = read_report(out)["metrics"], read_report(out / "base")["metrics"]
    assert base["heldout"]["exact_match"] <= 0.1 and tuned["heldout"]["exact_match"] >= 0.8
    assert base["mcq_heldout"]["acc"] < 0.6 and tuned["mcq_heldout"]["acc"] >= base["mcq_heldout"]["acc"] + 0.3
    assert read_report(out / "base")["model"]["model"] == str(tiny_vl_dir)  # the model the run started from
    table = capsys.readouterr().out
    assert "base" in table and "delta" in table
