"""The EvalScope bridge: our data in EvalScope's custom formats, EvalScope run against our own server on
127.0.0.1, its numbers in our report.json. The end-to-end test needs .venv-evalscope (scripts/test.sh makes
it, so CI runs it) and skips only where that environment is absent."""

from __future__ import annotations

import json
import sys

import pytest
from eval_fixtures import write_mcq, write_user_data

from tailorkit.cli import main
from tailorkit.errors import ConfigError
from tailorkit.eval.evalscope_bridge import find_python, metric_name, write_inputs
from tailorkit.eval.tasks import load_tasks


def _evalscope_python() -> str | None:
    try:
        return find_python(None)
    except ConfigError:
        return None


def test_missing_evalscope_names_the_setup(tmp_path, tiny_vl_dir, capsys):
    qa = write_user_data(tmp_path, [("Say hi", "hi", None)])
    rc = main(["eval", "--model", str(tiny_vl_dir), "--eval_dataset", str(qa), "--eval_backend", "evalscope",
               "--evalscope_python", sys.executable, "--eval_output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "bash scripts/setup_evalscope.sh" in err and "datasets<=4.8.4" in err


def test_tasks_convert_to_evalscope_custom_formats(tmp_path):
    qa = write_user_data(tmp_path, [("What colour is it?", "red", "red"), ("Say hi", "hi", None)])
    text_qa = write_user_data(tmp_path, [("Say hi", "hi", None)], name="text.jsonl")
    mcq = write_mcq(tmp_path, [{"question": "Grass?", "A": "red", "B": "green", "answer": "B"},
                               {"messages": [{"role": "user", "content": "Sky?"},
                                             {"role": "assistant", "content": "blue"}], "choices": ["red", "blue"]}])
    plan = write_inputs(load_tasks([str(qa), str(text_qa), str(mcq)]), tmp_path / "es")
    assert {b: list(s) for b, s in plan.items()} == {"general_vqa": ["mine"], "general_qa": ["text"],
                                                     "general_mcq": ["choices"]}
    vqa_rows = [json.loads(x) for x in (tmp_path / "es" / "general_vqa" / "mine.jsonl").read_text().splitlines()]
    parts = vqa_rows[0]["messages"][0]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,") and parts[1]["text"] == "What colour is it?"
    assert vqa_rows[0]["answer"] == "red" and vqa_rows[1]["messages"] == [{"role": "user", "content": "Say hi"}]
    mcq_rows = [json.loads(x) for x in (tmp_path / "es" / "general_mcq" / "choices_val.jsonl").read_text().splitlines()]
    assert mcq_rows == [{"id": 0, "question": "Grass?", "A": "red", "B": "green", "answer": "B"},
                        {"id": 1, "question": "Sky?", "A": "red", "B": "blue", "answer": "B"}]
    assert metric_name({"name": "rouge", "dimensions": {"statistic": "f1", "variant": "l"}}) == "rouge-l-f1"
    assert metric_name({"name": "bleu", "dimensions": {"ngram": 4}}) == "bleu-4"


@pytest.mark.slow
@pytest.mark.skipif(_evalscope_python() is None, reason="EvalScope's environment is absent (bash "
                                                        "scripts/setup_evalscope.sh; scripts/test.sh makes it)")
def test_evalscope_scores_a_local_file_through_our_server(tmp_path, tiny_vl_dir, capsys):
    args = ["--model", str(tiny_vl_dir), "--torch_dtype", "float32", "--max_new_tokens", "6"]
    probe = write_user_data(tmp_path, [("What colour is it?", "x", "red"), ("Say hi", "x", None)], name="probe.jsonl")
    assert main(["eval", *args, "--eval_dataset", str(probe), "--eval_output_dir", str(tmp_path / "native")]) == 0
    native = [json.loads(x)["response"] for x in (tmp_path / "native" / "predictions.jsonl").read_text().splitlines()]
    # references: the model's own greedy reply to the first row (a perfect answer), nonsense for the second
    qa = write_user_data(tmp_path, [("What colour is it?", native[0], "red"), ("Say hi", "zebra quantum", None)])
    mcq = write_mcq(tmp_path, [{"question": "Grass?", "A": "red", "B": "green", "answer": "B"}])
    out = tmp_path / "es"
    assert main(["eval", *args, "--eval_dataset", str(qa), str(mcq), "--eval_backend", "evalscope",
                 "--eval_output_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["eval_backend"] == "evalscope" and report["samples"] == 3
    assert report["metrics"]["mine"]["rouge-l-recall"] == pytest.approx(0.5)
    assert 0.0 <= report["metrics"]["choices"]["accuracy"] <= 1.0
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["response"] for r in rows if r["task"] == "mine"] == native  # same prompts, same model, same replies
    assert rows[0]["score"]["Rouge-L-R"] == 1.0 and rows[1]["score"]["Rouge-L-R"] == 0.0
    assert (out / "evalscope" / "run" / "reports").is_dir()
    assert "rouge-l-f1" in capsys.readouterr().out
