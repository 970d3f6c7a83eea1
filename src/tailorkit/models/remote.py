"""Tiny local remote-code model directories for families that exist only as Hub remote code."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

REMOTE_CODE = Path(__file__).parent / "remote_code"


def build_remote_tiny(out: str | Path, name: str, config: dict, tokenizer, extra_files: dict[str, str]) -> None:
    """Write remote_code/<name>/*.py, config.json and ``extra_files`` into ``out``, then random weights.

    The model is instantiated through ``trust_remote_code`` exactly as a user's load would, so the
    directory is what the family code and tests meet.
    """
    import json

    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for src in (REMOTE_CODE / name).glob("*.py"):
        shutil.copy(src, out / src.name)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for fname, text in extra_files.items():
        (out / fname).write_text(text)
    if tokenizer is not None:  # None: the tokenizer's files are among extra_files (a remote-code tokenizer)
        tokenizer.save_pretrained(out)
    cfg = AutoConfig.from_pretrained(out, trust_remote_code=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)
    model.save_pretrained(out)
