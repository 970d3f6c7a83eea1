"""Bin packing, flattening and the packing settings (fast, no model)."""

from __future__ import annotations

import random

import pytest
import torch

from tailorkit.config import SftConfig
from tailorkit.config.loading import build_config, flatten_layout
from tailorkit.data.encode import IGNORE, Encoded
from tailorkit.data.packing import Segment, best_fit_decreasing, flatten, pack
from tailorkit.errors import ConfigError, DataError
from tailorkit.train.attention import segment_starts
from tailorkit.train.batching import check_batching


def _enc(n: int, start: int = 0) -> Encoded:
    ids = list(range(start, start + n))
    return Encoded(input_ids=ids, labels=list(ids))


def test_best_fit_decreasing_places_every_sample_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    lower_bound = -(-sum(lengths) // 128)
    assert len(bins) <= lower_bound * 1.05 + 1


def test_best_fit_decreasing_prefers_the_tightest_bin():
    # Decreasing order: 6 opens bin A (room 4), 5 opens bin B (room 5); 4 fits A exactly, 5's bin takes 3 then 2.
    assert sorted(sorted(b) for b in best_fit_decreasing([6, 5, 4, 3, 2], 10)) == [[0, 2], [1, 3, 4]]


def test_pack_keeps_counts_and_reports_over_long_samples():
    samples = [_enc(n) for n in (10, 30, 50, 70, 90, 5)]
    packs, report = pack(samples, 64, truncation="delete")
    out = [s for p in packs for s in p]
    assert report.samples_in == 6 and report.samples_out == len(out) == 4
    assert report.skipped == {"longer than packing_length": 2}
    assert sorted(len(s) for s in out) == [5, 10, 30, 50]
    assert all(sum(len(s) for s in p) <= 64 for p in packs)
    with pytest.raises(DataError, match="packing_length"):
        pack(samples, 64, truncation="raise")


def test_flatten_restarts_positions_and_never_supervises_a_sample_start():
    batch = flatten([Segment(_enc(3, 10)), Segment(_enc(4, 20))])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 22, 23]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    assert batch["labels"].tolist() == [[IGNORE, 11, 12, IGNORE, 21, 22, 23]]
    assert "attention_mask" not in batch


def test_flatten_builds_four_row_mrope_positions_text_row_first():
    a = Segment(_enc(3), mrope=torch.tensor([[0, 1, 1], [0, 1, 2], [0, 1, 3]]))
    b = Segment(_enc(2), mrope=torch.tensor([[0, 5], [0, 6], [0, 7]]))
    pos = flatten([a, b])["position_ids"]
    assert pos.shape == (4, 1, 5)
    assert pos[:, 0].tolist() == [[0, 1, 2, 0, 1], [0, 1, 1, 0, 5], [0, 1, 2, 0, 6], [0, 1, 3, 0, 7]]


def test_segment_starts_from_position_ids():
    assert segment_starts(torch.tensor([[0, 1, 2, 0, 1, 0]]), 6, 6) == [0, 3, 5]
    assert segment_starts(torch.tensor([[0, 1, 2, 3]]), 4, 4) is None
    assert segment_starts(torch.tensor([[0, 1, 0, 1]]), 1, 4) is None  # decoding with a cache


def test_nested_pack_length_turns_packing_on():
    flat = flatten_layout({"pretrained_model_path": "m", "dataset": {"path": "d.jsonl", "pack_length": 512},
                           "training_args": {"max_length": 512}})
    cfg = build_config(SftConfig, flat)
    assert cfg.data.packing is True and cfg.data.packing_length == 512


def test_packing_flags_parse_and_conflict_with_group_by_length():
    cfg = build_config(SftConfig, {"model": "m", "dataset": ["d.jsonl"], "packing": "true", "max_length": 256,
                                   "packing_length": "4096", "padding_free": "false"})
    assert (cfg.data.packing, cfg.data.packing_length, cfg.data.padding_free) == (True, 4096, False)
    both = build_config(SftConfig, {"model": "m", "dataset": ["d.jsonl"], "packing": True, "group_by_length": True})
    with pytest.raises(ConfigError, match="group_by_length"):
        check_batching(both)
    with pytest.raises(ConfigError, match="packing_length 256 is below max_length 512"):
        build_config(SftConfig, {"model": "m", "dataset": ["d.jsonl"], "packing_length": 256, "max_length": 512})


def test_group_by_length_sampler_groups_our_encoded_samples():
    from tailorkit.train.trainer import length_grouped

    rng = random.Random(2)
    samples = [_enc(rng.randint(1, 300)) for _ in range(64)]
    order = list(length_grouped(samples, 4))
    assert sorted(order) == list(range(64))
    assert len(samples[order[0]]) == max(len(s) for s in samples)  # HF puts the longest batch first
    batches = [order[i:i + 4] for i in range(0, 64, 4)]
    spread = sum(max(len(samples[i]) for i in b) - min(len(samples[i]) for i in b) for b in batches)
    assert spread < 0.5 * sum(max(len(samples[i]) for i in b) for b in batches)
