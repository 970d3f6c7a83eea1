"""`tailorkit demo`: tiny Qwen2.5-VL, synthetic shapes, accuracy before and after fine-tuning.

Both measurements are `tailorkit eval`'s (its tasks, metrics, report.json and comparison table): exact
match of the generated answers, and multiple choice among the valid answers by likelihood, which an
untrained model does at chance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..eval.report import format_comparison, make_report, write_outputs
from ..eval.scoring import score_tasks
from ..eval.tasks import Task, load_task
from ..infer.engine import GenerationSettings, TransformersEngine

GENERATE, CHOICE = "shapes_generate", "shapes_choice"
SHOWN = ("exact_match", "acc", "chance")


@dataclass
class _DemoArgs:
    output_dir: str = field(default="demo_output", metadata={"help": "parent folder; each run gets a new subfolder"})
    train_samples: int = field(default=1200, metadata={"help": "synthetic training rows"})
    eval_samples: int = field(default=100, metadata={"help": "synthetic held-out rows"})
    num_train_epochs: float = field(default=5.0, metadata={"help": "passes over the training rows"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "rows per step"})
    seed: int = field(default=42, metadata={"help": "random seed"})


@dataclass
class DemoConfig:
    args: _DemoArgs = field(default_factory=_DemoArgs)


@dataclass
class DemoResult:
    run_dir: Path
    accuracy_before: float
    accuracy_after: float
    choice_before: float
    choice_after: float
    seconds: float


def eval_tasks(eval_file: Path) -> list[Task]:
    """The held-out rows twice: answers generated, and the valid answers ranked by likelihood."""
    return [replace(load_task(f"qa:{eval_file}"), name=GENERATE), replace(load_task(f"mcq:{eval_file}"), name=CHOICE)]


def measure(model_dir: Path, tasks: list[Task], label: str, out: Path) -> dict:
    """`tailorkit eval`'s report of the model in ``model_dir`` on ``tasks``, written to ``out``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    engine = TransformersEngine(AutoModelForImageTextToText.from_pretrained(model_dir),
                                AutoProcessor.from_pretrained(model_dir))
    outcome = score_tasks(engine, tasks, GenerationSettings(max_new_tokens=8), (), 16)
    report = make_report(outcome.metrics, outcome.samples, {"model": str(model_dir), "label": label},
                         {"max_new_tokens": 8, "tasks": {t.name: {"layout": t.layout, "path": t.path} for t in tasks}})
    write_outputs(out, report, outcome.predictions)
    return report


def demo(cfg: DemoConfig) -> DemoResult:
    from ..config import SftConfig, build_config
    from ..models.tiny import build_qwen2_5_vl
    from ..train.sft import sft
    from .shapes import write_split

    a = cfg.args
    start = time.time()
    run = Path(a.output_dir) / time.strftime("run-%Y%m%d-%H%M%S")
    run.mkdir(parents=True, exist_ok=False)
    print(f"[demo] building a tiny Qwen2.5-VL in {run / 'model'}")
    build_qwen2_5_vl(run / "model")
    train_file = write_split(run / "data", "train", a.train_samples, a.seed)
    tasks = eval_tasks(write_split(run / "data", "eval", a.eval_samples, a.seed + 1, choices=True))
    before = measure(run / "model", tasks, "before", run / "eval_before")
    print(f"[demo] before training: generated answers {before['metrics'][GENERATE]['exact_match']:.1%} correct, "
          f"best-scored valid answer {before['metrics'][CHOICE]['acc']:.1%} "
          f"(chance {before['metrics'][CHOICE]['chance']:.1%})")

    train_cfg = build_config(SftConfig, {
        "model": str(run / "model"), "dataset": [str(train_file)], "train_type": "full", "freeze_vit": False,
        "freeze_aligner": False, "torch_dtype": "float32", "num_train_epochs": a.num_train_epochs,
        "learning_rate": a.learning_rate, "per_device_train_batch_size": a.per_device_train_batch_size,
        "warmup_ratio": 0.05, "weight_decay": 0.0, "logging_steps": 5, "save_strategy": "no",
        "max_length": 128, "output_dir": str(run / "train"), "seed": a.seed})
    result = sft(train_cfg)

    after = measure(result.final_dir, tasks, "after", run / "eval_after")
    seconds = time.time() - start
    print(f"\n  tiny Qwen2.5-VL on synthetic shapes, {len(tasks[0].items)} held-out rows "
          f"(tailorkit eval; reports in {run / 'eval_before'} and {run / 'eval_after'})\n")
    print(format_comparison([before, after], metrics=SHOWN))
    print(f"\n  checkpoint: {result.final_dir}\n  loss plot:  {result.plot}\n  total time: {seconds:.0f} s\n")
    return DemoResult(run_dir=run, accuracy_before=before["metrics"][GENERATE]["exact_match"],
                      accuracy_after=after["metrics"][GENERATE]["exact_match"],
                      choice_before=before["metrics"][CHOICE]["acc"], choice_after=after["metrics"][CHOICE]["acc"],
                      seconds=seconds)
