"""Token-level losses and log-probabilities shared by every algorithm."""

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


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    """(log-prob of each next token [N, T-1] (0 off the supervised tokens), supervised mask [N, T-1])."""
    if temperature != 1.0:
        logits = logits / temperature
    return -shifted_token_nll(logits, labels), labels[:, 1:] != IGNORE


@torch.no_grad()
def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of the next-token distribution at each position [N, T-1] (for logging; no gradient)."""
    logp = torch.log_softmax(logits[:, :-1, :].float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is set (0 when nothing is)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """Sum of token NLL divided by ``num_items`` (the supervised tokens of the whole optimizer step).

    Normalising by the step's token count, not per micro-batch, makes the gradient independent of how
    the same tokens are split into micro-batches.
    """
    nll = shifted_token_nll(logits, labels)
    if num_items is None:
        num_items = (labels[:, 1:] != IGNORE).sum()
    return nll.sum() / torch.clamp(torch.as_tensor(num_items, device=nll.device, dtype=nll.dtype), min=1)
