"""`tailorkit eval`: score a base model, adapter or checkpoint on local tasks; report.json, predictions.jsonl, a table.

Prompts are encoded by the one training encoder through the infer engine, so they are the training
prompts; generation is batched (``--max_batch_size``) with a progress bar per task.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..config.eval import EvalConfig
from ..errors import ConfigError
from ..infer.load import ServeSpec, adapter_name, build_engine, resolve
from ..infer.run import settings_from_args
from . import evalscope_bridge
from .report import REPORT_FILE, format_comparison, format_table, make_report, read_report, write_outputs
from .scoring import TaskOutcome, score_tasks
from .tasks import LAYOUTS, Task, load_tasks

BASE_DIR = "base"


@dataclass
class EvalResult:
    output_dir: Path
    report: dict
    predictions: list[dict]
    base_report: dict | None = None


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Score the model on every ``--eval_dataset``; write and print the report (and the comparisons asked for)."""
    spec = resolve(cfg.model, cfg.engine)  # reads a --ckpt_dir's args.yaml, no weights
    e = cfg.eval
    system = e.system if e.system is not None else spec.run_config.get("system")
    tasks = load_tasks(e.eval_dataset, system=system, limit=e.eval_limit)
    out = _output_dir(cfg)
    compared = [read_report(d) for d in e.compare]
    base_model = _base_model(cfg, spec) if e.compare_base else None
    _check_backends(cfg, spec, tasks)

    engine, spec = build_engine(cfg.model, cfg.engine)
    settings = settings_from_args(cfg.generation)
    outcome = _score(cfg, engine, tasks, settings, engine.adapter_names, out)
    report = make_report(outcome.metrics, outcome.samples, describe_model(spec, cfg), _settings(cfg, tasks))
    write_outputs(out, report, outcome.predictions)
    print(f"\n{format_table(report)}\n[tailorkit] report: {out / REPORT_FILE}")

    base_report = None
    if cfg.eval.compare_base:
        if base_model is not None:
            engine = None  # the fine-tuned weights go before the base loads
        base_report = _score_base(cfg, engine, spec, base_model, tasks, settings, out / BASE_DIR)
    reports = [*compared, *([base_report] if base_report else []), report]
    if len(reports) > 1:
        print(f"\n{format_comparison(reports)}\n")
    return EvalResult(out, report, outcome.predictions, base_report)


def _output_dir(cfg: EvalConfig) -> Path:
    out = Path(cfg.eval.eval_output_dir) if cfg.eval.eval_output_dir else (
        Path(cfg.engine.ckpt_dir or ".") / "eval_output" / time.strftime("%Y%m%d-%H%M%S"))
    if (out / REPORT_FILE).exists():
        raise ConfigError(f"eval_output_dir {out} already holds a {REPORT_FILE}; choose another folder (earlier "
                          "reports can be shown next to this one with --compare)")
    return out


def _base_model(cfg: EvalConfig, spec: ServeSpec) -> str | None:
    """What --compare_base compares with: None for the loaded model without its adapters, else the model
    a full fine-tune was trained from."""
    if spec.adapters:
        return None
    trained_from = spec.run_config.get("model")
    if cfg.engine.ckpt_dir and trained_from and trained_from != spec.model.model:
        return trained_from
    raise ConfigError("--compare_base needs --adapters, or a --ckpt_dir of a training run: otherwise there is no "
                      "base model to compare with (use --compare with an earlier eval folder)")


def _check_backends(cfg: EvalConfig, spec: ServeSpec, tasks: list[Task]) -> None:
    if cfg.eval.eval_backend == "evalscope":
        evalscope_bridge.check(cfg, spec.adapters, tasks)
        return
    likelihood = [t.name for t in tasks if LAYOUTS[t.layout].likelihood]
    if likelihood and cfg.engine.infer_backend != "transformers":
        raise ConfigError(f"{', '.join(likelihood)}: multiple choice by likelihood needs --infer_backend transformers "
                          "(it reads the model's log-probabilities)")


def _score(cfg, engine, tasks, settings, adapters, out) -> TaskOutcome:
    if cfg.eval.eval_backend == "evalscope":
        return evalscope_bridge.run_evalscope(cfg, engine, tasks, settings, adapters, out)
    return score_tasks(engine, tasks, settings, adapters, cfg.engine.max_batch_size)


def _score_base(cfg, engine, spec, base_model, tasks, settings, out) -> dict:
    """Score the base: the same engine with its adapters off (``engine`` given), or the model a full
    checkpoint was trained from (``base_model``; loaded here)."""
    if engine is None:
        gc.collect()
        engine, spec = build_engine(replace(spec.model, model=base_model), replace(cfg.engine, ckpt_dir=None, adapters=[]))
    outcome = _score(cfg, engine, tasks, settings, (), out)
    report = make_report(outcome.metrics, outcome.samples, describe_model(spec, cfg, base=True), _settings(cfg, tasks))
    write_outputs(out, report, outcome.predictions)
    print(f"[tailorkit] base model report: {out / REPORT_FILE}")
    return report


def describe_model(spec: ServeSpec, cfg: EvalConfig, *, base: bool = False) -> dict:
    """What was scored, with a short label for tables."""
    if base:
        return {"model": spec.model.model, "adapters": {}, "ckpt_dir": None, "label": "base"}
    if spec.adapters:
        label = "+".join(spec.adapters)
    elif cfg.engine.ckpt_dir:
        label = adapter_name(spec.model.model)
    else:
        label = Path(spec.model.model).name
    return {"model": spec.model.model, "adapters": dict(spec.adapters), "ckpt_dir": cfg.engine.ckpt_dir,
            "label": label}


def _settings(cfg: EvalConfig, tasks: list[Task]) -> dict:
    return {**asdict(cfg.eval), **asdict(cfg.generation), "infer_backend": cfg.engine.infer_backend,
            "max_batch_size": cfg.engine.max_batch_size,
            "tasks": {t.name: {"layout": t.layout, "path": t.path} for t in tasks}}
