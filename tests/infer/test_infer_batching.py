"""The batching queue and the per-row reply tracker, with a fake engine and a fake tokenizer (no model)."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from tailorkit.infer.batching import BatchQueue
from tailorkit.infer.engine import Completion, GenerationSettings, ReplyTracker, Request, held_back


class FakeEngine:
    """Answers each prompt with itself reversed; sees batches; fails on prompts that say 'boom'."""

    adapter_names = ("a",)
    processor = None

    def __init__(self):
        self.batches: list[list[Request]] = []
        self.release = threading.Event()

    def generate_batch(self, requests, on_text=None):
        self.release.wait(5)
        self.batches.append(requests)
        if any(r.prompt == "boom" for r in requests):
            raise RuntimeError("boom")
        out = []
        for i, r in enumerate(requests):
            text = r.prompt[::-1]
            if on_text:
                for ch in text:
                    on_text(i, ch)
            out.append(Completion(text, len(r.prompt), len(text), "stop"))
        return out


def test_concurrent_requests_share_batches_by_key_and_keep_their_results():
    engine = FakeEngine()

    async def go():
        queue = BatchQueue(engine, max_batch_size=3, wait_s=0.01)
        queue.start()
        reqs = [Request(prompt=f"p{i}", adapters=("a",) if i % 2 else ()) for i in range(10)]
        futures = [queue.enqueue(r) for r in reqs]
        engine.release.set()
        done = await asyncio.gather(*futures)
        await queue.close()
        return reqs, done, queue.stats.batch_sizes

    reqs, done, sizes = asyncio.run(go())
    assert [c.text for c in done] == [r.prompt[::-1] for r in reqs]
    assert all(len({r.batch_key() for r in b}) == 1 and len(b) <= 3 for b in engine.batches)
    assert sizes == [len(b) for b in engine.batches] and sum(sizes) == 10 and max(sizes) == 3


def test_a_failing_batch_fails_its_requests_only_and_deltas_come_before_results():
    engine = FakeEngine()
    engine.release.set()

    async def go():
        queue = BatchQueue(engine, max_batch_size=4, wait_s=0.01)
        queue.start()
        bad = queue.enqueue(Request(prompt="boom", adapters=("a",)))
        deltas = []
        good = queue.enqueue(Request(prompt="abc"), on_delta=deltas.append)
        with pytest.raises(RuntimeError, match="boom"):
            await bad
        result = await good
        await queue.close()
        return deltas, result

    deltas, result = asyncio.run(go())
    assert deltas == ["c", "b", "a"] and result.text == "cba"


class CharTokenizer:
    """Token i is the i-th character of VOCAB; 0 is end of turn."""

    VOCAB = "\0abcdefgh XY"

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.VOCAB[i] for i in ids if not (skip_special_tokens and i == 0))


def run_tracker(rows: list[list[int]], settings: list[GenerationSettings], stream: bool = True):
    got = {i: [] for i in range(len(rows))}
    reqs = [Request(prompt="x", settings=s) for s in settings]
    tracker = ReplyTracker(CharTokenizer(), {0}, reqs, (lambda i, d: got[i].append(d)) if stream else None)
    width = max(map(len, rows))
    for step in range(width):
        col = torch.tensor([[r[step] if step < len(r) else 0] for r in rows])
        done = tracker(col)
    return tracker.finish([1] * len(rows)), got, done


def test_tracker_ends_rows_on_eos_stop_strings_and_their_own_length():
    v = CharTokenizer.VOCAB.index
    rows = [[v("a"), v("b"), 0, v("c")],  # end of turn after 'ab'
            [v("a"), v("X"), v("Y"), v("c")],  # stop string 'XY' split over two tokens
            [v("a"), v("b"), v("c"), v("d")]]  # its own max_new_tokens of 2
    settings = [GenerationSettings(max_new_tokens=4), GenerationSettings(max_new_tokens=4, stop=("XY",)),
                GenerationSettings(max_new_tokens=2)]
    done, got, finished = run_tracker(rows, settings)
    assert [(c.text, c.finish_reason, c.completion_tokens) for c in done] == [
        ("ab", "stop", 3), ("a", "stop", 3), ("ab", "length", 2)]
    assert finished.tolist() == [True, True, True]
    assert ["".join(got[i]) for i in range(3)] == ["ab", "a", "ab"]
    assert "X" not in got[1]  # held back as a possible start of the stop string, then dropped


def test_held_back_covers_stop_prefixes_and_partial_characters():
    assert held_back("hello wor", ("world",)) == 3
    assert held_back("hello", ("world",)) == 0
    assert held_back("ab\ufffd", ()) == 1


def test_tracker_without_streaming_decodes_once_with_the_same_result():
    v = CharTokenizer.VOCAB.index
    rows = [[v("a"), v("b"), 0, v("c")], [v("a"), v("X"), v("Y"), v("c")], [v("a"), v("b"), v("c"), v("d")]]
    settings = [GenerationSettings(max_new_tokens=4), GenerationSettings(max_new_tokens=4, stop=("XY",)),
                GenerationSettings(max_new_tokens=2)]
    quiet, _, _ = run_tracker(rows, settings, stream=False)
    streamed, _, _ = run_tracker(rows, settings, stream=True)
    assert quiet == streamed
    plain, _, _ = run_tracker(rows[1:2], [GenerationSettings(max_new_tokens=4)], stream=False)
    assert (plain[0].text, plain[0].finish_reason) == ("aXYc", "length")


def test_generation_settings_map_to_transformers_and_batch_keys():
    sampled = GenerationSettings(temperature=0.7, top_p=0.9, top_k=0).generate_kwargs()
    assert (sampled["do_sample"], sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (True, 0.7, 0.9, 0)
    assert GenerationSettings().generate_kwargs()["do_sample"] is False
    # greedy requests batch together whatever their seed; sampled ones with different seeds do not
    assert GenerationSettings(seed=1).sampling_key() == GenerationSettings(seed=2).sampling_key()
    assert GenerationSettings(temperature=1, seed=1).sampling_key() != GenerationSettings(temperature=1, seed=2)\
        .sampling_key()
