"""Multiple choice by likelihood: each option is the assistant reply, encoded by the one training encoder,
and scored by the log-probability of its supervised tokens (the option and its end-of-turn token).

No generation is involved, so an untrained model picks at chance and before/after numbers compare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from ..data.collate import Collator
from ..data.encode import encode
from ..train.losses import shifted_token_nll
from .tasks import EvalItem


def with_reply(item: EvalItem, option: str):
    conv = item.conversation
    return replace(conv, messages=conv.messages + [{"role": "assistant", "content": option}])


@torch.no_grad()
def option_logprobs(engine, items: list[EvalItem], adapters: tuple[str, ...], batch_size: int,
                    on_item: Callable[[int], None] | None = None) -> list[list[float]]:
    """Log-probability of every option of every item, batched over options (at most ``batch_size`` rows).

    ``engine`` is a TransformersEngine: its model, processor and adapter switching are used."""
    model, processor = engine.model, engine.processor
    collate = Collator(engine.tokenizer.pad_token_id)
    device = next(model.parameters()).device
    rows = [(i, option) for i, item in enumerate(items) for option in item.choices]
    scores: list[list[float]] = [[] for _ in items]
    finished = 0
    was_training = model.training
    model.eval()
    try:
        with engine.using_adapters(adapters):
            for start in range(0, len(rows), batch_size):
                chunk = rows[start: start + batch_size]
                batch = collate([encode(with_reply(items[i], option), processor) for i, option in chunk])
                labels = batch.pop("labels").to(device)
                logits = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).logits
                for (i, _), value in zip(chunk, (-shifted_token_nll(logits, labels).sum(dim=1)).tolist()):
                    scores[i].append(value)
                now = sum(1 for k, s in enumerate(scores) if len(s) == len(items[k].choices))
                if on_item is not None and now > finished:
                    on_item(now - finished)
                finished = now
    finally:
        model.train(was_training)
    return scores


def pick(item: EvalItem, logprobs: list[float]) -> str:
    """The option with the highest log-probability (the first one on ties)."""
    return item.choices[max(range(len(logprobs)), key=lambda k: logprobs[k])]
