"""Evaluation during training: the native metrics of `tailorkit eval` on ``--eval_dataset`` every eval step.

The values are logged next to the loss (logging.jsonl, as ``eval_<task>/<metric>``; loss.png plots them)
and kept in the trainer's log history. The model is used as it is at that step (its adapters stay
active and trainable); generation runs in eval mode and training mode is restored afterwards.
"""

from __future__ import annotations

from transformers import TrainerCallback

from ..infer.engine import GenerationSettings, TransformersEngine
from ..train.callbacks import append_log
from .scoring import score_tasks
from .tasks import Task


class GenerationEvalCallback(TrainerCallback):
    def __init__(self, tasks: list[Task], settings: GenerationSettings, *, strategy: str, steps: int,
                 batch_size: int):
        if strategy not in ("steps", "epoch"):
            raise ValueError(f"strategy must be steps or epoch, got {strategy!r}")
        self.tasks, self.settings, self.strategy, self.steps = tasks, settings, strategy, steps
        self.batch_size = batch_size

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.strategy == "steps" and state.global_step % self.steps == 0:
            self.evaluate(args, state, model, processing_class)

    def on_epoch_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.strategy == "epoch":
            self.evaluate(args, state, model, processing_class)

    def evaluate(self, args, state, model, processor) -> dict[str, float]:
        """Score every task now; log ``eval_<task>/<metric>`` at this step (main process)."""
        engine = TransformersEngine(model, processor, self.batch_size, as_loaded=True)
        outcome = score_tasks(engine, self.tasks, self.settings, (), self.batch_size, progress=False)
        values = {f"eval_{task}/{metric}": value for task, metrics in outcome.metrics.items()
                  for metric, value in metrics.items()}
        if state.is_world_process_zero:
            record = {"step": state.global_step, "epoch": state.epoch, **values}
            state.log_history.append(record)
            append_log(args.output_dir, record)
        return values
