"""Prove an export: reload it from disk with plain transformers and compare it with the model in memory.

Rows are encoded by the one encoder; logits are compared at every position of every row, and the mean NLL is
taken per supervised (assistant) token, as training counts it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.collate import Collator
from ..data.dataset import encode_all, load_conversations
from ..data.encode import IGNORE, Encoded
from ..data.formats import Conversation, parse_row
from ..errors import ConfigError, ModelError
from ..models.value_head import HEAD, last_hidden, load_reward_model, token_values, value_head_of

# Logit tolerance of a merge, by weight dtype: atol + rtol * max|reference logit|. A merge in 16-bit rounds the
# merged weight once where base + adapter rounds two products, so 16-bit gets a looser bound.
TOLERANCE = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (5e-2, 2e-2), torch.float16: (5e-2, 1e-2)}


@dataclass
class Rows:
    """Encoded rows: ``check`` are compared (logits) and scored (NLL) after writing; ``calibration`` feed
    gptq/awq and never overlap ``check``."""

    check: list[Encoded]
    calibration: list[Encoded]
    origin: str  # where the rows came from, for the report


def probe_rows(multimodal: bool) -> list[Conversation]:
    """Built-in conversations used when no --dataset is given (one with an image for vision models)."""
    rows = [{"messages": [{"role": "user", "content": "What colour is the sky?"},
                          {"role": "assistant", "content": "The sky is blue."}]},
            {"messages": [{"role": "user", "content": "Tell me a story about a cat and a dog."},
                          {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}]}]
    if multimodal:
        from ..demo.shapes import draw

        image = draw("red", "circle", random.Random(0))
        rows.append({"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                                  {"role": "assistant", "content": "red"}], "images": [image]})
    return [parse_row(r, source="<built-in probes>", line=i + 1) for i, r in enumerate(rows)]


def read_rows(datasets: list[str], multimodal: bool, *, n_check: int, n_calibration: int, calibrate: bool
              ) -> tuple[list[Conversation], list[Conversation], str]:
    """(check rows, calibration rows, origin), read and checked before any weights load.

    The last ``n_check`` rows of --dataset are checked (held out); with calibration the rows before them
    calibrate. Without --dataset the built-in probes are checked."""
    if not datasets:
        return probe_rows(multimodal), [], "built-in probes"
    convs = load_conversations(datasets)
    if not calibrate:
        return convs[-n_check:], [], ", ".join(datasets)
    if len(convs) <= n_check:
        raise ConfigError(f"--dataset has {len(convs)} rows: gptq/awq need rows to calibrate on besides the "
                          f"{n_check} held out for verification (--verify_n_samples); give more rows or lower it")
    return convs[-n_check:], convs[:-n_check][:n_calibration], ", ".join(datasets)


def encode_rows(check: list[Conversation], calibration: list[Conversation], origin: str, processor,
                max_length: int) -> Rows:
    return Rows(_encode(check, processor, max_length), _encode(calibration, processor, max_length), origin)


def _encode(convs: list[Conversation], processor, max_length: int) -> list[Encoded]:
    return encode_all(convs, processor, max_length=max_length, truncation="raise", desc="encoding export rows")[0]


def batch_of(enc: Encoded, pad_token_id: int, device) -> dict[str, torch.Tensor]:
    """One row as model inputs (no labels: the loss is computed here)."""
    batch = Collator(pad_token_id)([enc])
    batch.pop("labels")
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def row_outputs(model: torch.nn.Module, rows: list[Encoded], pad_token_id: int) -> list[torch.Tensor]:
    """Float32 logits of each row (a reward model: its value head at every position), on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    if getattr(model, HEAD, None) is not None:
        return [token_values(value_head_of(model), last_hidden(model, batch_of(r, pad_token_id, device))[1]).cpu()
                for r in rows]
    # no cache: the comparison is of one forward pass
    return [model(**batch_of(r, pad_token_id, device), use_cache=False).logits.float().cpu() for r in rows]


def max_abs_diff(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(reference, other))


def mean_nll(logits: list[torch.Tensor], rows: list[Encoded]) -> float:
    """Mean negative log-likelihood per supervised token (labels shifted by one, as in training)."""
    total, count = 0.0, 0
    for out, row in zip(logits, rows):
        labels = torch.tensor(row.labels[1:])
        keep = labels != IGNORE
        if keep.any():
            nll = torch.nn.functional.cross_entropy(out[0, :-1][keep], labels[keep], reduction="sum")
            total, count = total + float(nll), count + int(keep.sum())
    if count == 0:
        raise ModelError("no held-out row has supervised (assistant) tokens to score the NLL on; give rows with "
                         "assistant replies")
    return total / count


def merge_tolerance(dtype: torch.dtype, reference: list[torch.Tensor]) -> float:
    atol, rtol = TOLERANCE.get(dtype, TOLERANCE[torch.bfloat16])
    return atol + rtol * max(float(r.abs().max()) for r in reference)


def reload(folder: Path, auto_class: str, dtype: torch.dtype | None = None, head: str = "lm",
           **kwargs) -> torch.nn.Module:
    """The export as a user loads it: ``<Auto class>.from_pretrained(folder)``; a reward model with our loader
    (that class for the LM, plus ``v_head.weight``)."""
    import transformers

    if head == "reward":
        return load_reward_model(str(folder), torch_dtype=str(dtype or torch.float32).replace("torch.", "")).model
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return getattr(transformers, auto_class).from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError, ImportError) as e:
        raise ModelError(f"{folder}: the export does not load with {auto_class}.from_pretrained: {e}") from e
