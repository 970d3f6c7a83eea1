"""--eval_dataset during sft: eval's native metrics at every evaluation, logged next to the loss and plotted."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import TEXT_PAIRS, text_chat_rows, write_jsonl
from tailorkit.config import SftConfig, build_config
from tailorkit.config.rlhf import RlhfConfig
from tailorkit.errors import ConfigError
from tailorkit.eval.scoring import score_tasks
from tailorkit.eval.tasks import load_tasks
from tailorkit.infer.engine import GenerationSettings, TransformersEngine
from tailorkit.train.sft import sft


def _values(model_dir, data, out, **over) -> dict:
    return {"model": str(model_dir), "dataset": [str(data)], "train_type": "full", "torch_dtype": "float32",
            "max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 3e-3, "lr_scheduler_type": "constant",
            "weight_decay": 0.0, "logging_steps": 1, "save_strategy": "no", "output_dir": str(out), **over}


def test_eval_metrics_are_logged_at_every_eval_step(tiny_text_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", text_chat_rows(16))
    held_out = write_jsonl(tmp_path / "colours.jsonl", text_chat_rows(len(TEXT_PAIRS)))
    cfg = build_config(SftConfig, _values(tiny_text_dir, data, tmp_path / "out", val_dataset=[str(held_out)],
                                          eval_dataset=[str(held_out)], eval_strategy="steps", eval_steps=2,
                                          eval_max_new_tokens=4))
    result = sft(cfg)
    rows = [json.loads(x) for x in (tmp_path / "out" / "logging.jsonl").read_text().splitlines()]
    gen = [r for r in rows if "eval_colours/exact_match" in r]
    assert [r["step"] for r in gen] == [2, 4]
    assert {"eval_colours/rouge_l", "eval_colours/char_acc"} <= set(gen[0])
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]  # the plain eval loss is still there
    assert [r["step"] for r in result.log_history if "eval_colours/exact_match" in r] == [2, 4]
    # the last one is what `tailorkit eval` gives the final weights
    engine = TransformersEngine(AutoModelForCausalLM.from_pretrained(result.final_dir),
                                AutoTokenizer.from_pretrained(result.final_dir))
    final = score_tasks(engine, load_tasks([str(held_out)]), GenerationSettings(max_new_tokens=4), (), 1,
                        progress=False).metrics["colours"]
    assert {k.split("/")[1]: v for k, v in gen[-1].items() if k.startswith("eval_colours/")} == pytest.approx(final)
    assert result.plot is not None and result.plot.stat().st_size > 0


def test_eval_strategy_epoch(tiny_text_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", text_chat_rows(8))
    values = _values(tiny_text_dir, data, tmp_path / "out", max_steps=-1, num_train_epochs=2,
                     eval_dataset=[f"qa:{data}"], eval_limit=2, eval_strategy="epoch", eval_max_new_tokens=2)
    sft(build_config(SftConfig, values))
    rows = [json.loads(x) for x in (tmp_path / "out" / "logging.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in rows if "eval_train/exact_match" in r] == [(2, 1.0), (4, 2.0)]


def test_eval_dataset_needs_an_eval_strategy_and_is_refused_by_rlhf(tmp_path):
    values = _values("m", "d.jsonl", tmp_path, eval_dataset=["e.jsonl"])
    with pytest.raises(ConfigError, match="set --eval_strategy steps or epoch"):
        build_config(SftConfig, values)
    with pytest.raises(ConfigError, match="available for sft and pt"):
        build_config(RlhfConfig, {**values, "eval_strategy": "steps"})
