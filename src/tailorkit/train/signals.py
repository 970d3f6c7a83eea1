"""SIGTERM / SIGINT during training: finish the current step, save a checkpoint, then stop."""

from __future__ import annotations

import signal
import sys
import threading

from transformers import TrainerCallback

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal(TrainerCallback):
    """Turns the first SIGTERM/SIGINT into 'save at the end of this step and stop'; a second one exits at once.

    Preemption (SLURM, Kubernetes, spot instances) sends SIGTERM with a grace period; Ctrl-C sends SIGINT.
    Handlers are installed only for the duration of ``train()`` and only from the main thread.
    """

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def _handle(self, signum, frame):
        if self.received is not None:
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum).name
        print(f"[tailorkit] {self.received} received: saving a checkpoint after the current step, then exiting "
              "(send it again to exit at once without saving)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        """Put back the handlers that were there before training (also after a failed run)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
