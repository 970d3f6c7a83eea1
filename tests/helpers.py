"""Small builders shared by tests: datasets on disk and a parameter-change recorder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import TrainerCallback

VL_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What colour is the shape?<|im_end|>\n"
             "<|im_start|>assistant\n")
TEXT_PROMPT = "<|im_start|>user\nWhat colour is the sky?<|im_end|>\n<|im_start|>assistant\n"
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


def vl_inputs(processor) -> dict:
    """The tiny Qwen VL prompt with one drawn shape, as model inputs."""
    import random

    from tailorkit.demo.shapes import draw

    image = draw("red", "circle", random.Random(0))
    return dict(processor(text=[VL_PROMPT], images=[image], return_tensors="pt"))


def text_inputs(tokenizer) -> dict:
    return dict(tokenizer([TEXT_PROMPT], return_tensors="pt"))


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    model.eval()
    return model(**inputs, use_cache=False).logits.float()
