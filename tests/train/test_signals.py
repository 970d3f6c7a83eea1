"""SIGTERM / SIGINT: the first asks for a save and a stop at the end of the step; a second one exits at once."""

from __future__ import annotations

import signal

import pytest
from transformers import TrainerControl, TrainerState

from tailorkit.train.signals import StopOnSignal


class Exited(Exception):
    """Stands in for what the process's own handler does (exit) so the test survives it."""


def _exit(signum, frame):
    raise Exited(signum)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_saves_and_stops_second_exits(sig):
    original = signal.signal(sig, _exit)
    cb, state, control = StopOnSignal(), TrainerState(), TrainerControl()
    try:
        cb.on_train_begin(None, state, control)
        cb.on_step_end(None, state, control)
        assert not control.should_save and not control.should_training_stop  # nothing received yet
        signal.raise_signal(sig)  # handled: training goes on to the end of the step
        assert cb.received == sig.name
        cb.on_step_end(None, state, control)
        assert control.should_save and control.should_training_stop
        with pytest.raises(Exited):
            signal.raise_signal(sig)  # the second one reaches the process's own handler
        assert signal.getsignal(sig) is _exit
    finally:
        signal.signal(sig, original)


def test_handlers_are_restored_after_training():
    original = signal.getsignal(signal.SIGTERM)
    cb = StopOnSignal()
    cb.on_train_begin(None, TrainerState(), TrainerControl())
    assert signal.getsignal(signal.SIGTERM) == cb._handle
    cb.on_train_end(None, TrainerState(), TrainerControl())
    assert signal.getsignal(signal.SIGTERM) is original
