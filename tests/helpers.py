"""Small builders shared by tests: datasets on disk, random LoRA adapters, checkpoint reloads, a change recorder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import TrainerCallback

from tailorkit.testing import LLM_ATTENTION, build_random_lora  # noqa: F401  (used by tests, and by bench/)

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


def load_checkpoint(base_model_dir: str | Path, checkpoint: str | Path, auto_class: str, **kwargs):
    """Reload a checkpoint the way a user would: plain transformers, plus plain peft for adapters."""
    import transformers
    from peft import PeftModel

    auto = getattr(transformers, auto_class)
    ckpt = Path(checkpoint)
    if (ckpt / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(auto.from_pretrained(str(base_model_dir), **kwargs), str(ckpt))
    shipped = sorted(p.parent for p in ckpt.glob("*/adapter_config.json"))
    if shipped:
        model = auto.from_pretrained(str(base_model_dir), **kwargs)
        for folder in shipped:
            model.load_adapter(str(folder), adapter_name=folder.name)
        model.set_adapter([f.name for f in shipped])
        return model
    return auto.from_pretrained(str(ckpt), **kwargs)


def write_wav(path: Path, seconds: float = 0.5, rate: int = 16000, freq: float = 440.0) -> Path:
    """A mono 16-bit PCM .wav tone."""
    import wave

    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate), w.writeframes(samples.tobytes())
    return path


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
