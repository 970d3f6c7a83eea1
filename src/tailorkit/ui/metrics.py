"""What the Runs tab shows of a run, read from its files: chart series from logging.jsonl, the trainability
table from trainable.json, the report of an eval or export job."""

from __future__ import annotations

import json
from pathlib import Path

from ..run_files import MANIFEST_FILE

_EVAL_TIMING = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def _loss(key: str) -> bool:
    return key in ("loss", "eval_loss")


def _eval_metric(key: str) -> bool:
    return key.startswith("eval_") and key != "eval_loss" and key not in _EVAL_TIMING


def _reward(key: str) -> bool:
    # dpo/kto/rm/grpo/ppo: rewards/*; grpo, ppo: reward, KL to the reference; gkd: KL to the teacher
    return key.startswith("rewards/") or key in ("reward", "reward_std", "kl", "non_score_reward", "teacher_kl")


# chart name -> which logged keys it plots (each key one line)
CHARTS = {
    "loss": _loss,
    "learning rate": lambda k: k == "learning_rate",
    "grad norm": lambda k: k == "grad_norm",
    "eval metrics": _eval_metric,
    "rewards / margins": _reward,
}


def chart_points(rows: list[dict]) -> dict[str, list[tuple[float, float, str]]]:
    """chart name -> (step, value, series) for every numeric value logged (a chart with none is empty)."""
    out: dict[str, list] = {name: [] for name in CHARTS}
    for row in rows:
        step = row.get("step")
        if step is None:
            continue
        for key, value in row.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            for name, wanted in CHARTS.items():
                if wanted(key):
                    out[name].append((float(step), float(value), key))
    return out


ALWAYS_SHOWN = ("loss", "learning rate", "grad norm")  # the others show once the run logs such values
MAX_POINTS = 2000  # per line: a long run is thinned evenly (its last point kept) so each refresh stays small


def chart_frame(points: list[tuple[float, float, str]]):
    """A pandas frame (step, value, series) for a line plot, or None without points (gradio's plot keeps the
    series types of the first frame it draws, so an empty frame would leave it unable to draw lines)."""
    import pandas as pd

    if not points:
        return None
    return pd.DataFrame(thin(points), columns=["step", "value", "series"]).astype({"series": "string"})


def thin(points: list[tuple[float, float, str]], most: int = MAX_POINTS) -> list[tuple[float, float, str]]:
    """At most ``most`` points per series, evenly spread, the last one kept."""
    out = []
    for series in dict.fromkeys(p[2] for p in points):
        line = [p for p in points if p[2] == series]
        stride = -(-len(line) // most)  # ceil
        out += line[::stride] + ([line[-1]] if (len(line) - 1) % stride else [])
    return out


def trainability_rows(output: Path) -> list[list]:
    """component, mode, trainable, total, learning rates: the plan the run printed before step 1."""
    try:
        manifest = json.loads((output / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return []
    rows = [[r["component"], r["mode"], r["trainable"], r["total"], ", ".join(f"{x:.3g}" for x in r["lr"]) or "-"]
            for r in manifest.get("components", [])]
    rows.append(["all", manifest.get("train_type", ""), manifest.get("trainable", 0), manifest.get("total", 0), ""])
    return rows


TRAINABILITY_HEADERS = ["component", "mode", "trainable", "total", "learning rate"]


def job_report(verb: str, output: Path) -> dict | None:
    """The report an eval (report.json) or export (export_report.json) job wrote, once it has."""
    if verb == "eval":
        from ..eval.report import REPORT_FILE
    elif verb == "export":
        from ..export.run import REPORT_FILE
    else:
        return None
    try:
        return json.loads((output / REPORT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
