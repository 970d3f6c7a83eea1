"""Evaluation outputs: report.json, predictions.jsonl, the printed table and the side-by-side comparison."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.jsonl"
# Metrics on MME's own scale (points, a category out of 200) rather than fractions shown as percentages.
_POINT_METRICS = ("score", "perception", "cognition")


def make_report(metrics: dict[str, dict[str, float]], samples: dict[str, int], model: dict, settings: dict) -> dict:
    """{"metrics": {task: {metric: value}}, "samples": total, "model": ..., "settings": ...} (and per task)."""
    return {"metrics": metrics, "samples": sum(samples.values()), "samples_per_task": samples, "model": model,
            "settings": settings}


def write_outputs(folder: Path, report: dict, predictions: list[dict]) -> Path:
    """Write report.json and predictions.jsonl into ``folder``; returns the report path."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / PREDICTIONS_FILE).open("w", encoding="utf-8") as f:
        for row in predictions:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    path = folder / REPORT_FILE
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_report(folder: str | Path) -> dict:
    """The report.json of an earlier evaluation (its folder, or the file itself)."""
    path = Path(folder)
    path = path / REPORT_FILE if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"--compare {folder}: no {REPORT_FILE} there; give folders written by `tailorkit eval`")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise ConfigError(f"{path}: has no 'metrics' mapping; not a report written by `tailorkit eval`")
    return report


def _is_points(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1] in _POINT_METRICS


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if _is_points(metric) else f"{100 * value:.1f}%"


def fmt_delta(metric: str, delta: float) -> str:
    return f"{delta:+.1f}" if _is_points(metric) else f"{100 * delta:+.1f}"


def _rows(reports: list[dict], only: tuple[str, ...] | None) -> list[tuple[str, str]]:
    """(task, metric) pairs in first-seen order over the reports (only the metrics named in ``only``)."""
    seen: dict[tuple[str, str], None] = {}
    for report in reports:
        for task, metrics in report["metrics"].items():
            for metric in metrics:
                if only is None or metric in only:
                    seen[(task, metric)] = None
    return list(seen)


def label_of(report: dict) -> str:
    return str(report.get("model", {}).get("label") or "model")


def format_table(report: dict) -> str:
    """One report's metrics, one line per task and metric."""
    return format_comparison([report], deltas=False)


def format_comparison(reports: list[dict], labels: list[str] | None = None, *, deltas: bool = True,
                      metrics: tuple[str, ...] | None = None) -> str:
    """Reports side by side (one column each); with two or more, the change from the first to the last.
    ``metrics``: show only these metric names.

    Percentages for fractions (accuracy, ROUGE ...), points for MME scores; the delta column is in
    percentage points (or score points)."""
    labels = list(labels or [label_of(r) for r in reports])
    if len(set(labels)) < len(labels):
        labels = [f"{chr(65 + i)}: {lab}" for i, lab in enumerate(labels)]
    rows = _rows(reports, metrics)
    show_delta = deltas and len(reports) > 1
    key_w = max([len("task"), *(len(t) for t, _ in rows)]) + 2
    met_w = max([len("metric"), *(len(m) for _, m in rows)]) + 2
    col_w = max([10, *(len(lab) + 2 for lab in labels)])
    head = f"{'task':<{key_w}}{'metric':<{met_w}}" + "".join(f"{lab:>{col_w}}" for lab in labels)
    head += f"{'delta':>{10}}" if show_delta else ""
    lines = [head, "-" * len(head)]
    for task, metric in rows:
        values = [r["metrics"].get(task, {}).get(metric) for r in reports]
        line = f"{task:<{key_w}}{metric:<{met_w}}" + "".join(f"{fmt(metric, v):>{col_w}}" for v in values)
        if show_delta:
            first, last = values[0], values[-1]
            line += f"{fmt_delta(metric, last - first) if None not in (first, last) else '-':>10}"
        lines.append(line)
    samples = [str(r.get("samples", "?")) for r in reports]
    lines.append(f"{'samples':<{key_w + met_w}}" + "".join(f"{s:>{col_w}}" for s in samples))
    return "\n".join(lines)
