"""Token-level losses shared by every algorithm."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.encode import IGNORE


def shifted_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of labels[t+1] given logits[t]; 0 where the label is ignored."""
    logits = logits[:, :-1, :].float()
    target = labels[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE,
                          reduction="none")
    return nll.view(target.shape)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """Sum of token NLL divided by ``num_items`` (the supervised tokens of the whole optimizer step).

    Normalising by the step's token count, not per micro-batch, makes the gradient independent of how
    the same tokens are split into micro-batches.
    """
    nll = shifted_token_nll(logits, labels)
    if num_items is None:
        num_items = (labels[:, 1:] != IGNORE).sum()
    return nll.sum() / torch.clamp(torch.as_tensor(num_items, device=nll.device, dtype=nll.dtype), min=1)
