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


def prompt_conversation(with_image: bool):
    """A one-turn prompt for inference engines: a question about a 56x56 green image, or a plain greeting."""
    from PIL import Image

    from tailorkit.data.formats import parse_row

    content = "<image>What colour is the shape?" if with_image else "Hello!"
    images = [Image.new("RGB", (56, 56), (0, 255, 0))] if with_image else []
    return parse_row({"messages": [{"role": "user", "content": content}], "images": images}, need_reply=False)


def hide_package(monkeypatch, name: str) -> None:
    """Make importlib.util.find_spec report ``name`` as not installed (other packages unaffected)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda pkg, *a: None if pkg == name else real(pkg, *a))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
