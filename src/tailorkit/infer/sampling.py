"""Per-row sampling inside one batched `generate`: each row keeps its own settings and its own random stream.

transformers applies one temperature / top-p / top-k / repetition penalty and one global seed to a whole
batch. `RowSampler` is a logits processor that does it per row instead: generate runs greedy, and for a
sampled row the processor draws the token itself (from the row's own `torch.Generator` when the request
has a seed) and leaves only that token's score finite. Rows whose scores are not finite are failed (the
row ends with an error; its batch-mates go on), so one request's numbers can never break another's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

@dataclass(frozen=True)
class GenerationSettings:
    """One request's generation settings (the engine re-exports this class)."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


NON_FINITE = "the model's scores became non-finite (NaN or infinite) for this request's sampling settings"


class RowSampler:
    """A transformers logits processor (``__call__(input_ids, scores) -> scores``) with per-row settings."""

    def __init__(self, settings: list[GenerationSettings], device: torch.device, fallback_token: int):
        self.settings = settings
        self.fallback_token = fallback_token  # what a failed row emits (it is ended right after)
        self.errors: list[str | None] = [None] * len(settings)
        self.penalty = torch.tensor([[s.repetition_penalty] for s in settings], dtype=torch.float32, device=device)
        self.sampled = [i for i, s in enumerate(settings) if s.temperature > 0]
        self.generators = {i: torch.Generator(device=device).manual_seed(settings[i].seed)
                           for i in self.sampled if settings[i].seed is not None}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        if bool((self.penalty != 1).any()):
            scores = repetition_penalty(scores, input_ids, self.penalty)
        if self.sampled:
            scores = self._sample(scores)
        return self._guard(scores)

    def _sample(self, scores: torch.Tensor) -> torch.Tensor:
        rows = torch.tensor(self.sampled, device=scores.device)
        s = [self.settings[i] for i in self.sampled]
        probs = nucleus_probs(scores[rows], [x.temperature for x in s], [x.top_k for x in s], [x.top_p for x in s])
        ok = torch.isfinite(probs).all(dim=-1) & (probs.sum(dim=-1) > 0)
        usable = ok.tolist()
        tokens = torch.zeros(len(self.sampled), dtype=torch.long, device=scores.device)
        shared = [j for j, i in enumerate(self.sampled) if usable[j] and i not in self.generators]
        if shared:  # rows without a seed draw from the global stream, together
            tokens[shared] = torch.multinomial(probs[shared], 1).squeeze(1)
        for j, i in enumerate(self.sampled):
            if usable[j] and i in self.generators:
                tokens[j] = torch.multinomial(probs[j], 1, generator=self.generators[i]).squeeze(0)
        chosen = torch.full_like(probs, float("-inf")).scatter(1, tokens.unsqueeze(1), 0.0)
        picked = scores.clone()
        picked[rows] = torch.where(ok.unsqueeze(1), chosen, float("nan"))  # NaN: failed by the guard
        return picked

    def _guard(self, scores: torch.Tensor) -> torch.Tensor:
        bad = torch.isnan(scores).any(dim=-1) | torch.isposinf(scores).any(dim=-1) | ~torch.isfinite(scores).any(dim=-1)
        for i in bad.nonzero().flatten().tolist():
            self.errors[i] = self.errors[i] or NON_FINITE
        for i, err in enumerate(self.errors):
            if err is not None:  # keep emitting the fallback until the stopping criterion ends the row
                scores[i] = float("-inf")
                scores[i, self.fallback_token] = 0.0
        return scores


def repetition_penalty(scores: torch.Tensor, input_ids: torch.LongTensor, penalty: torch.Tensor) -> torch.Tensor:
    """transformers' repetition penalty with one penalty per row: seen tokens' scores are divided by it when
    positive and multiplied by it when negative."""
    seen = scores.gather(1, input_ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, input_ids, seen)


def nucleus_probs(scores: torch.Tensor, temperature: list[float], top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Sampling probabilities per row after temperature, top-k (0: off) and top-p, in transformers' order."""
    device = scores.device
    logits = scores / torch.tensor(temperature, dtype=scores.dtype, device=device).unsqueeze(1)
    ordered, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=device).unsqueeze(0)
    k = torch.tensor([kk if kk > 0 else logits.shape[-1] for kk in top_k], device=device).unsqueeze(1)
    ordered = ordered.masked_fill(rank >= k, float("-inf"))
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    p = torch.tensor([x if x < 1 else float("inf") for x in top_p], dtype=scores.dtype, device=device).unsqueeze(1)
    outside = (cumulative - ordered.softmax(dim=-1)) >= p  # mass before this token already reaches top_p
    ordered = ordered.masked_fill(outside & (rank > 0), float("-inf"))  # the likeliest token always stays
    kept = torch.full_like(logits, float("-inf")).scatter(1, order, ordered)
    return kept.softmax(dim=-1)
