"""Alarms for silent training failures: each names what it saw and what usually causes it.

Non-finite loss or gradients always stop the run (the step's update is dropped, so the weights and the last
checkpoint stay good; with fp16 the grad scaler's occasional overflow skips are normal, only SCALER_PATIENCE
in a row count); the other alarms warn, or stop the run with ``--strict_alarms``. Warnings are printed
above the progress bar (whose title counts them), logged through ``logging`` and appended to ``logging.jsonl``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from ..data.encode import IGNORE

logger = logging.getLogger("tailorkit.alarms")
SILENT_STEPS = 3  # steps after which trainable tensors that never got a gradient raise zero_grad
SCALER_PATIENCE = 20  # fp16: consecutive overflowing steps the grad scaler may skip before it is an alarm

CAUSES = {
    "non_finite": "a learning rate that is too high, fp16 overflow (train in bfloat16 or float32), or a corrupt "
                  "sample; lower --learning_rate or find the sample, then resume from the last checkpoint",
    "constant_loss": "no parameter is being updated (learning rate 0, everything frozen, gradients detached) or "
                     "the same batch is fed again and again",
    "zero_loss": "labels that leak the answer into the input or a loss masked down to trivially predictable "
                 "tokens; check the data and the supervised spans",
    "zero_grad": "trainable parameters that are not on the forward path: a no-op adapter (LoRA --target_modules "
                 "or --modules_to_save naming modules this data never uses, e.g. a vision tower with text-only "
                 "data) or a detached graph",
    "no_supervised_tokens": "assistant replies cut off by --max_length, a chat template that renders no assistant "
                            "turn, or empty rows; such a batch teaches nothing",
    "zero_lr": "--learning_rate 0, a schedule that already decayed to 0 (check --lr_scheduler_type and "
               "--max_steps), or a warm-up longer than the run",
}


@dataclass
class Alarm:
    kind: str
    step: int
    detail: str
    fatal: bool

    def __str__(self) -> str:
        return f"step {self.step}: {self.kind}: {self.detail}. Usually caused by {CAUSES[self.kind]}"


class AlarmCallback(TrainerCallback):
    """Watches every micro-batch (through ``TrainerHooks.after_batch``), every optimizer step and every log record."""

    def __init__(self, patience: int = 5, strict: bool = False, log_file: str | Path | None = None,
                 check_grads: bool = True, progress=None):
        self.patience = patience
        self.check_grads = check_grads  # off under DeepSpeed, which keeps gradients outside p.grad
        self.strict = strict
        self.log_file = Path(log_file) if log_file else None
        self.progress = progress  # callbacks.ProgressCallback whose bar shows the alarm count
        self.alarms: list[Alarm] = []  # the first alarm of each kind (and every fatal one)
        self.counts: Counter = Counter()
        self.fatal: Alarm | None = None
        self._losses: list[float] = []
        self._step = 0
        self._step_supervised = 0
        self._step_nonfinite_loss = False
        self._silent: set[str] | None = None
        self._silent_steps = 0
        self._overflows = 0

    def observe_batch(self, inputs: dict, loss: torch.Tensor) -> None:
        """Per micro-batch: supervised-token count and loss finiteness (the logged loss hides NaN)."""
        labels = inputs.get("labels")
        if labels is not None:
            supervised = int((labels[..., 1:] != IGNORE).sum())
            self._step_supervised += supervised
            if supervised == 0:
                self.raise_alarm("no_supervised_tokens", f"a micro-batch of {labels.shape[0]} sample(s) has every "
                                 "label masked (-100)")
        if not bool(torch.isfinite(loss.detach()).all()):
            self._step_nonfinite_loss = True

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            self.log_file = None  # one process writes the log

    def on_step_begin(self, args, state, control, **kwargs):
        self._step = state.global_step + 1

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._step = state.global_step + 1
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad] if (
            model is not None and self.check_grads) else []
        norms = grad_norms([p for _, p in named])
        norm = torch.linalg.vector_norm(norms) if named else torch.tensor(0.0)
        overflow = not self._step_nonfinite_loss and not bool(torch.isfinite(norm))
        self._overflows = self._overflows + 1 if overflow else 0
        if overflow and getattr(args, "fp16", False) and self._overflows < SCALER_PATIENCE:
            pass  # fp16 loss scaling: the grad scaler skips this step and lowers its scale; that is its job
        elif self._step_nonfinite_loss or overflow:
            what = "loss" if self._step_nonfinite_loss else "gradient norm"
            if overflow and self._overflows > 1:
                what += f" ({self._overflows} steps in a row)"
            self.raise_alarm("non_finite", f"{what} is NaN or infinite; this step's update is dropped and training "
                             "stops", fatal=True)
            for _, p in named:
                p.grad = None  # the optimizer skips parameters without gradients: weights stay the last good ones
        elif named and float(norm) == 0.0 and self._step_supervised > 0:
            self.raise_alarm("zero_grad", f"the gradient of all {len(named)} trainable tensors is exactly 0")
        elif named:
            self._track_silent(named, norms)
        if optimizer is not None and state.global_step >= args.get_warmup_steps(state.max_steps):
            lr = max(g["lr"] for g in optimizer.param_groups)
            if lr == 0:
                self.raise_alarm("zero_lr", f"learning rate is 0 after warm-up "
                                 f"({getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)} schedule)")
        self._step_supervised = 0
        self._step_nonfinite_loss = False

    def _track_silent(self, named, norms) -> None:
        """Trainable tensors with no gradient in any of the first SILENT_STEPS steps: a no-op part of the adapter.

        One step is not enough: a fresh LoRA A matrix gets a zero gradient until B has moved.
        """
        if self._silent_steps >= SILENT_STEPS:
            return
        if self._silent is None:
            self._silent = {n for n, _ in named}
        self._silent -= {n for (n, _), v in zip(named, norms.tolist()) if v != 0}
        self._silent_steps += 1
        if self._silent_steps == SILENT_STEPS and self._silent:
            shown = ", ".join(sorted(self._silent)[:3]) + (", ..." if len(self._silent) > 3 else "")
            self.raise_alarm("zero_grad", f"{len(self._silent)} of {len(named)} trainable tensors got no gradient in "
                             f"{SILENT_STEPS} steps ({shown})")

    def on_step_end(self, args, state, control, **kwargs):
        if self.fatal is not None:
            control.should_training_stop = True
            control.should_save = False  # never checkpoint a state reached after the alarm
            control.should_evaluate = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        self._losses = (self._losses + [float(logs["loss"])])[-self.patience:]
        if len(self._losses) == self.patience and len(set(self._losses)) == 1:
            value = self._losses[0]
            kind = "zero_loss" if value == 0 else "constant_loss"
            self.raise_alarm(kind, f"the logged loss was exactly {value} for {self.patience} logging steps in a row",
                             step=state.global_step)
            self._losses = []

    def raise_alarm(self, kind: str, detail: str, *, fatal: bool = False, step: int | None = None) -> None:
        alarm = Alarm(kind, self._step if step is None else step, detail, fatal or self.strict)
        self.counts[kind] += 1
        bar = getattr(self.progress, "bar", None)
        if bar is not None:
            bar.set_description(f"training ({sum(self.counts.values())} alarms)", refresh=False)
        if alarm.fatal and self.fatal is None:
            self.fatal = alarm
        if self.counts[kind] > 1 and not alarm.fatal:
            return  # counted; the first one was reported
        self.alarms.append(alarm)
        text = f"[tailorkit] ALARM {alarm}" + (" (fatal)" if alarm.fatal else "")
        if logger.hasHandlers():  # else logging's last-resort handler would print it a second time
            logger.warning(text)
        tqdm.write(text, file=sys.stderr)
        if self.log_file is not None:
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": alarm.step, "alarm": kind, "message": str(alarm),
                                    "fatal": alarm.fatal}) + "\n")

    def summary(self) -> list[str]:
        """One line per alarm kind: count, first step, fatal or not."""
        first = {}
        for a in self.alarms:
            first.setdefault(a.kind, a)
        return [f"{kind} x{self.counts[kind]} (first at step {a.step}{', fatal' if a.fatal else ''})"
                for kind, a in first.items()]


def grad_norms(params: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of each parameter's gradient (0 where it has none)."""
    grads = [p.grad for p in params]
    device = next((g.device for g in grads if g is not None), torch.device("cpu"))
    return torch.stack([whole(torch.linalg.vector_norm(g.detach().float())).to(device) if g is not None
                        else torch.zeros((), device=device) for g in grads]) if grads else torch.zeros(0)


def whole(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: an FSDP2 DTensor's value over every rank (a collective all ranks reach together)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
