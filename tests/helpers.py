"""Small builders shared by tests: datasets on disk and a parameter-change recorder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import TrainerCallback

TEXT_PAIRS = [("Say red", "red"), ("Say blue", "blue"), ("Say green", "green"), ("Say yellow", "yellow")]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def text_chat_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in (TEXT_PAIRS[i % len(TEXT_PAIRS)] for i in range(n))]


class ParamChangeRecorder(TrainerCallback):
    """Snapshots every parameter at train begin; at train end lists which changed."""

    def __init__(self):
        self.before: dict[str, torch.Tensor] = {}
        self.changed: dict[str, bool] = {}
        self.trainable: dict[str, bool] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.trainable = {n: p.requires_grad for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.changed = {n: not torch.equal(self.before[n], p.detach()) for n, p in model.named_parameters()}


def write_wav(path: Path, seconds: float = 0.5, rate: int = 16000, freq: float = 440.0) -> Path:
    """A mono 16-bit PCM .wav tone."""
    import wave

    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate), w.writeframes(samples.tobytes())
    return path
