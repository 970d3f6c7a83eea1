"""What the Runs tab reads from a run's files: chart lines from logging.jsonl (sft, eval metrics, rlhf rewards),
the log tail as a terminal shows it, the trainability table."""

from __future__ import annotations

import json

import pytest

from tailorkit.errors import ConfigError
from tailorkit.run_files import LOG_FILE, MANIFEST_FILE
from tailorkit.ui.jobs import log_rows, tail_lines
from tailorkit.ui.metrics import chart_frame, chart_points, thin, trainability_rows

ROWS = [
    {"step": 1, "epoch": 0.1, "loss": 2.0, "grad_norm": 3.0, "learning_rate": 1e-4, "rewards/margins": 0.5,
     "rewards/chosen": 0.2},
    {"step": 2, "loss": 1.5, "learning_rate": 9e-5, "reward": 0.7, "kl": 0.01},
    {"step": 3, "loss": 1.2, "teacher_kl": 0.4, "non_score_reward": -0.02, "pg_loss": 0.1},
    {"step": 2, "eval_loss": 1.7, "eval_runtime": 3.2, "eval_qa/exact_match": 0.25, "eval_rewards/margins": 0.3},
]


def test_each_chart_gets_its_values_as_lines():
    charts = chart_points(ROWS)
    assert charts["loss"] == [(1, 2.0, "loss"), (2, 1.5, "loss"), (3, 1.2, "loss"), (2, 1.7, "eval_loss")]
    assert charts["learning rate"] == [(1, 1e-4, "learning_rate"), (2, 9e-5, "learning_rate")]
    assert charts["grad norm"] == [(1, 3.0, "grad_norm")]
    assert charts["eval metrics"] == [(2, 0.25, "eval_qa/exact_match"), (2, 0.3, "eval_rewards/margins")]
    assert {s for _, _, s in charts["rewards / margins"]} == {"rewards/margins", "rewards/chosen", "reward", "kl",
                                                                "teacher_kl", "non_score_reward"}
    assert chart_frame([]) is None
    assert list(chart_frame(charts["loss"]).columns) == ["step", "value", "series"]


def test_long_runs_are_thinned_evenly_per_line_keeping_the_last_point():
    points = [(float(i), float(i), "loss") for i in range(5001)] + [(0.0, 1.0, "eval_loss")]
    kept = thin(points, most=1000)
    loss = [p for p in kept if p[2] == "loss"]
    assert len(loss) <= 1001 and loss[0][0] == 0 and loss[-1][0] == 5000
    assert (0.0, 1.0, "eval_loss") in kept


def test_logging_jsonl_is_read_up_to_the_line_being_written(tmp_path):
    (tmp_path / LOG_FILE).write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n" + '{"step": 3, "lo')
    assert log_rows(tmp_path) == ROWS[:2]
    (tmp_path / LOG_FILE).write_text(json.dumps(ROWS[0]) + "\nnot json\n")
    with pytest.raises(ConfigError, match=f"{LOG_FILE}:2: not a JSON record"):
        log_rows(tmp_path)
    assert log_rows(tmp_path / "no-such-run") == []


def test_the_log_tail_shows_a_progress_bar_at_its_latest_state(tmp_path):
    log = tmp_path / "log"
    log.write_text("start\ntraining: 1/10\rtraining: 5/10\rtraining: 9/10\r\ndone\n")
    assert tail_lines(log, 3) == ["training: 9/10", "done", ""]


def test_the_trainability_table_comes_from_trainable_json(tmp_path):
    manifest = {"train_type": "lora", "trainable": 10, "total": 100, "components": [
        {"component": "vision", "mode": "frozen", "trainable": 0, "total": 60, "lr": []},
        {"component": "llm", "mode": "lora", "trainable": 10, "total": 40, "lr": [0.0001, 2e-05]}]}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert trainability_rows(tmp_path) == [["vision", "frozen", 0, 60, "-"], ["llm", "lora", 10, 40, "0.0001, 2e-05"],
                                           ["all", "lora", 10, 100, ""]]
