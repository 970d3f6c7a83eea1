"""Test-only driver: `python resume_child.py HOOK STEP sft-args...` trains and stops itself at a chosen point.

Hooks (deterministic, no timing): sigterm_at_step (SIGTERM at the start of step STEP), kill_mid_step (SIGKILL
between the micro-batches of step STEP), kill_mid_save (SIGKILL after checkpoint-STEP's weights are written,
before its optimizer state), kill_before_last (SIGKILL after checkpoint-STEP is renamed into place, before
`last` points to it).
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import TrainerCallback

from tailorkit.cli import parse
from tailorkit.errors import TailorkitError
from tailorkit.train.checkpoint import CheckpointWriter
from tailorkit.train.sft import sft
from tailorkit.train.trainer import Trainer


def _sigkill():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class StepHook(TrainerCallback):
    def __init__(self, hook: str, step: int):
        self.hook, self.step = hook, step

    def on_step_begin(self, args, state, control, **kwargs):
        if self.hook == "sigterm_at_step" and state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_substep_end(self, args, state, control, **kwargs):
        if self.hook == "kill_mid_step" and state.global_step + 1 == self.step:
            _sigkill()


def main(hook: str, step: int, argv: list[str]) -> int:
    if hook == "kill_mid_save":
        original = Trainer._save_optimizer_and_scheduler

        def save_then_die(self, output_dir):
            if self.state.global_step == step:
                _sigkill()
            return original(self, output_dir)

        Trainer._save_optimizer_and_scheduler = save_then_die
    if hook == "kill_before_last":
        point_last = CheckpointWriter.point_last

        def die_before_pointer(self, folder):
            if folder.name == f"checkpoint-{step}":
                _sigkill()
            return point_last(self, folder)

        CheckpointWriter.point_last = die_before_pointer
    try:
        sft(parse("sft", argv), callbacks=[StepHook(hook, step)])
    except TailorkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
