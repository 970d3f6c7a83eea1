"""`tailorkit eval` end to end on the tiny Qwen2.5-VL, and its scoring pipeline on replies we choose."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import write_mcq, write_mme, write_textvqa, write_user_data, write_vqav2

from tailorkit.cli import main
from tailorkit.data.formats import text_of
from tailorkit.eval.report import format_comparison, read_report
from tailorkit.eval.scoring import score_tasks
from tailorkit.eval.tasks import load_tasks
from tailorkit.infer.engine import Completion, GenerationSettings


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-cli")
    return {"mme": write_mme(root), "textvqa": write_textvqa(root), "vqav2": write_vqav2(root),
            "qa": write_user_data(root, [("What colour is it?", "red", "red"), ("Say hi", "hi", None),
                                         ("Name a colour", "blue", "blue")]),
            "mcq": write_mcq(root, [{"messages": [{"role": "user", "content": "<image>Colour?"},
                                                  {"role": "assistant", "content": "red"}],
                                     "images": [str(root / "user" / "images" / "0.png")],
                                     "choices": ["red", "blue", "green"]}])}


def prompt_key(conv) -> tuple:
    return tuple(str(x) for x in conv.images), text_of(conv.messages[-1]["content"])


class ScriptedEngine:
    """Answers each prompt (its images and last text) with a reply we choose."""

    adapter_names = ()

    def __init__(self, replies: dict[tuple, str]):
        self.replies = replies

    def generate_batch(self, requests, on_text=None):
        return [Completion(self.replies[prompt_key(r.conversation)], 10, 1, "stop") for r in requests]


def test_scoring_pipeline_on_chosen_replies(data):
    mme_task, tv_task = load_tasks([str(data["mme"]), str(data["textvqa"])])
    replies = {prompt_key(i.conversation): "Yes" for i in mme_task.items}
    replies[prompt_key(mme_task.items[1].conversation)] = "No, it is not."  # artwork/10002: both answers right
    tv_replies = ["Stop.", "3 dogs", "Coca-Cola"]
    replies.update({prompt_key(i.conversation): r for i, r in zip(tv_task.items, tv_replies)})
    outcome = score_tasks(ScriptedEngine(replies), [mme_task, tv_task], GenerationSettings(), (), 4, progress=False)
    mme_scores, tv_scores = outcome.metrics["mme"], outcome.metrics["textvqa"]
    # artwork: 10002 both right, 10049 Yes/Yes -> 3 of 4 right, 1 of 2 images; color: Yes/Yes twice -> 2/4, 0/2
    assert mme_scores["artwork/acc"] == pytest.approx(0.75) and mme_scores["artwork/acc+"] == pytest.approx(0.5)
    assert mme_scores["color/acc"] == pytest.approx(0.5) and mme_scores["color/acc+"] == 0.0
    assert mme_scores["perception"] == pytest.approx(125 + 50)
    assert tv_scores["vqa_acc"] == pytest.approx((1 + 0 + 1) / 3)
    assert outcome.samples == {"mme": 8, "textvqa": 3}
    rows = [p for p in outcome.predictions if p["task"] == "textvqa"]
    assert [r["score"]["vqa_acc"] for r in rows] == [1.0, 0.0, 1.0] and len(rows[0]["answers"]) == 10


def _run(args: list[str]) -> int:
    return main(["eval", "--torch_dtype", "float32", "--max_new_tokens", "4", "--max_batch_size", "4", *args])


def test_eval_writes_report_predictions_and_table(tiny_vl_dir, data, tmp_path, capsys):
    out = tmp_path / "ev"
    specs = [str(data[k]) for k in ("mme", "textvqa", "vqav2", "qa", "mcq")]
    assert _run(["--model", str(tiny_vl_dir), "--eval_dataset", *specs, "--eval_output_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["metrics"]) == {"mme", "textvqa", "vqav2", "mine", "choices"}
    assert report["samples"] == 8 + 3 + 2 + 3 + 1 and report["samples_per_task"]["mine"] == 3
    assert set(report["metrics"]["mine"]) == {"exact_match", "contains", "rouge_l", "bleu4", "char_acc"}
    assert {"acc", "artwork/acc+", "color/score", "perception"} <= set(report["metrics"]["mme"])
    assert report["model"]["model"] == str(tiny_vl_dir) and report["settings"]["temperature"] == 0.0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == report["samples"]
    assert {"task", "source", "messages", "reference", "response", "score"} <= set(rows[0])
    mcq = [r for r in rows if r["task"] == "choices"][0]
    assert len(mcq["logprobs"]) == 3 and mcq["response"] in mcq["choices"]
    mean = sum(r["score"]["exact_match"] for r in rows if r["task"] == "mine") / 3
    assert report["metrics"]["mine"]["exact_match"] == pytest.approx(mean)
    printed = capsys.readouterr().out
    assert "perception" in printed and "vqa_acc" in printed
    # an existing report is never overwritten
    assert _run(["--model", str(tiny_vl_dir), "--eval_dataset", specs[3], "--eval_output_dir", str(out)]) == 2


def test_compare_base_is_the_model_with_its_adapters_off(tiny_vl_dir, tiny_vl_adapters, data, tmp_path, capsys):
    spec = str(data["qa"])
    assert _run(["--model", str(tiny_vl_dir), "--eval_dataset", spec, "--eval_output_dir", str(tmp_path / "plain")]) == 0
    tuned = tmp_path / "tuned"
    assert _run(["--model", str(tiny_vl_dir), "--adapters", f"alpha={tiny_vl_adapters['alpha']}", "--compare_base",
                 "--eval_dataset", spec, "--eval_output_dir", str(tuned)]) == 0
    printed = capsys.readouterr().out
    plain = [json.loads(x)["response"] for x in (tmp_path / "plain" / "predictions.jsonl").read_text().splitlines()]
    base = [json.loads(x)["response"] for x in (tuned / "base" / "predictions.jsonl").read_text().splitlines()]
    adapted = [json.loads(x)["response"] for x in (tuned / "predictions.jsonl").read_text().splitlines()]
    assert base == plain and adapted != plain  # the random adapter changes the replies
    assert read_report(tuned)["model"]["label"] == "alpha" and read_report(tuned / "base")["model"]["label"] == "base"
    assert "base" in printed and "alpha" in printed and "delta" in printed
    # --compare prints earlier reports next to this one
    assert _run(["--model", str(tiny_vl_dir), "--eval_dataset", spec, "--compare", str(tmp_path / "plain"),
                 str(tuned), "--eval_output_dir", str(tmp_path / "third")]) == 0
    assert "delta" in capsys.readouterr().out


def test_compare_base_without_adapters_is_refused_before_loading(tiny_vl_dir, data, tmp_path, capsys):
    assert _run(["--model", str(tiny_vl_dir), "--compare_base", "--eval_dataset", str(data["qa"]),
                 "--eval_output_dir", str(tmp_path / "x")]) == 2
    assert "--compare_base needs --adapters" in capsys.readouterr().err


def test_comparison_table_deltas():
    before = {"metrics": {"t": {"exact_match": 0.25, "score": 100.0}}, "samples": 4, "model": {"label": "base"}}
    after = {"metrics": {"t": {"exact_match": 0.75, "score": 150.0}}, "samples": 4, "model": {"label": "tuned"}}
    table = format_comparison([before, after])
    em = next(line for line in table.splitlines() if "exact_match" in line).split()
    assert em[-3:] == ["25.0%", "75.0%", "+50.0"]
    score = next(line for line in table.splitlines() if " score " in line).split()
    assert score[-3:] == ["100.0", "150.0", "+50.0"]
