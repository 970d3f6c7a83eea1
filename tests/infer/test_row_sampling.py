"""Per-row sampling: transformers' warpers row by row, a row's seed is its own, non-finite rows fail alone."""

from __future__ import annotations

import pytest
import torch
from transformers import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

from tailorkit.infer.engine import GenerationSettings
from tailorkit.infer.sampling import NON_FINITE, RowSampler, nucleus_probs, repetition_penalty

VOCAB = 50


def hf_probs(scores: torch.Tensor, s: GenerationSettings) -> torch.Tensor:
    out = TemperatureLogitsWarper(s.temperature)(None, scores.clone())
    if s.top_k:
        out = TopKLogitsWarper(s.top_k)(None, out)
    if s.top_p < 1:
        out = TopPLogitsWarper(s.top_p)(None, out)
    return out.softmax(-1)


def test_nucleus_probs_match_transformers_warpers_row_by_row():
    torch.manual_seed(0)
    scores = torch.randn(4, VOCAB) * 3
    settings = [GenerationSettings(temperature=0.7, top_p=0.9), GenerationSettings(temperature=1.3, top_k=5),
                GenerationSettings(temperature=0.5, top_k=10, top_p=0.5), GenerationSettings(temperature=1.0)]
    ours = nucleus_probs(scores, [s.temperature for s in settings], [s.top_k for s in settings],
                         [s.top_p for s in settings])
    for i, s in enumerate(settings):
        torch.testing.assert_close(ours[i], hf_probs(scores[i: i + 1], s)[0], atol=1e-6, rtol=1e-5)


def test_repetition_penalty_matches_transformers_row_by_row():
    torch.manual_seed(1)
    scores, ids = torch.randn(2, VOCAB), torch.randint(0, VOCAB, (2, 7))
    ours = repetition_penalty(scores, ids, torch.tensor([[1.3], [0.8]]))
    for i, p in enumerate((1.3, 0.8)):
        torch.testing.assert_close(ours[i], RepetitionPenaltyLogitsProcessor(p)(ids[i: i + 1], scores[i: i + 1])[0])


def draws(settings: list[GenerationSettings], row: int, steps: int = 20, device: str = "cpu") -> list[int]:
    """Tokens row ``row`` gets over ``steps`` steps (the argmax generate takes after the sampler)."""
    torch.manual_seed(123)  # the global stream (rows without a seed) is the same for every call
    sampler = RowSampler(settings, torch.device(device), fallback_token=0)
    ids = torch.zeros(len(settings), 1, dtype=torch.long, device=device)
    out = []
    for step in range(steps):
        scores = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(step)).repeat(len(settings), 1)
        out.append(int(sampler(ids, scores.to(device))[row].argmax()))
    return out


def seeded_row_is_its_own(device: str) -> None:
    seeded = GenerationSettings(temperature=1.0, seed=7)
    alone = draws([seeded], 0, device=device)
    with_mates = draws([GenerationSettings(temperature=1.5, seed=2**63 - 1), GenerationSettings(temperature=0.9),
                        seeded, GenerationSettings()], 2, device=device)
    assert alone == with_mates
    assert len(set(alone)) > 3  # really sampled, not greedy
    assert draws([GenerationSettings(temperature=1.0, seed=8)], 0, device=device) != alone


def test_a_seeded_row_draws_the_same_tokens_whatever_its_batch_mates():
    seeded_row_is_its_own("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_seeded_row_is_its_own_on_cuda_too():
    """The per-row generators live on the model's device."""
    seeded_row_is_its_own("cuda")


def test_greedy_rows_keep_their_scores_and_a_non_finite_row_fails_alone():
    settings = [GenerationSettings(), GenerationSettings(temperature=1.0, seed=1), GenerationSettings()]
    sampler = RowSampler(settings, torch.device("cpu"), fallback_token=3)
    scores = torch.randn(3, VOCAB)
    scores[2, 5] = float("nan")
    out = sampler(torch.zeros(3, 1, dtype=torch.long), scores.clone())
    torch.testing.assert_close(out[0], scores[0])  # greedy, no penalty: untouched
    assert torch.isfinite(out[1]).sum() == 1  # the sampled token is the only one left
    assert sampler.errors == [None, None, NON_FINITE]
    assert int(out[2].argmax()) == 3  # the failed row emits the fallback until it is ended


@pytest.mark.parametrize("bad", ["inf", "-inf-everywhere"])
def test_the_guard_catches_infinite_scores(bad):
    sampler = RowSampler([GenerationSettings(temperature=0.5), GenerationSettings()], torch.device("cpu"), 0)
    scores = torch.randn(2, VOCAB)
    if bad == "inf":
        scores[0, 1] = float("inf")
    else:
        scores[0] = float("-inf")
    sampler(torch.zeros(2, 1, dtype=torch.long), scores)
    assert sampler.errors == [NON_FINITE, None]
