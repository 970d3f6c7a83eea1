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


def test_batch_keys_separate_input_forms_not_sampling_settings():
    from tailorkit.data.formats import Conversation

    text = Conversation(messages=[{"role": "user", "content": "hi"}])
    image = Conversation(messages=[{"role": "user", "content": [{"type": "image"}]}], images=["x.png"])
    greedy, sampled = GenerationSettings(), GenerationSettings(temperature=1.0, seed=2**63 - 1, top_k=3)
    # sampling settings and seeds are per row: they never split a batch
    assert Request(conversation=text, settings=greedy).batch_key() == Request(conversation=text, settings=sampled)\
        .batch_key()
    keys = {Request(prompt="hi").batch_key(), Request(conversation=text).batch_key(),
            Request(conversation=image).batch_key(), Request(conversation=image, adapters=("a",)).batch_key()}
    assert len(keys) == 4  # completions, text chat, image chat, another adapter: never in one batch


def test_tracker_ends_cancelled_and_failed_rows_alone():
    v = CharTokenizer.VOCAB.index
    reqs = [Request(prompt="x", settings=GenerationSettings(max_new_tokens=6)) for _ in range(3)]
    errors = [None, None, None]
    tracker = ReplyTracker(CharTokenizer(), {0}, reqs, None, row_errors=errors)
    for step in range(6):
        if step == 2:
            reqs[0].cancelled.set()
            errors[1] = "boom"
        done = tracker(torch.tensor([[v("a")]] * 3))
        if step == 2:
            assert done.tolist() == [True, True, False]  # within the step the flag was set in
    out = tracker.finish([1, 1, 1])
    assert [(c.finish_reason, c.completion_tokens, c.error) for c in out] == [
        ("cancelled", 2, None), ("error", 2, "boom"), ("length", 6, None)]
    assert out[2].text == "aaaaaa"


class CancellableEngine(FakeEngine):
    """Generates one character per 10 ms step until each row's cancel flag is set; counts steps per row."""

    def generate_batch(self, requests, on_text=None):
        steps = [0] * len(requests)
        while not all(r.cancelled.is_set() for r in requests) and max(steps) < 500:
            for i, r in enumerate(requests):
                if not r.cancelled.is_set():
                    steps[i] += 1
                    if on_text:
                        on_text(i, "x")
            threading.Event().wait(0.01)
        return [Completion("x" * k, 1, k, "cancelled") for k in steps]


def test_cancelling_a_future_stops_its_row_and_frees_the_queue():
    engine = CancellableEngine()

    async def go():
        queue = BatchQueue(engine, max_batch_size=4, wait_s=0.01)
        queue.start()
        seen = []
        fut = queue.enqueue(Request(prompt="long"), on_delta=seen.append)
        while len(seen) < 2:
            await asyncio.sleep(0.005)
        fut.cancel()
        while queue.generating:
            await asyncio.sleep(0.005)
        await queue.close()
        return queue.stats, len(seen)

    stats, streamed = asyncio.run(go())
    assert stats.cancelled_tokens and stats.cancelled_tokens[0] <= streamed + 3 < 500


def test_rows_of_a_failed_batch_are_retried_alone_and_only_the_culprit_fails():
    engine = FakeEngine()
    engine.release.set()

    async def go():
        queue = BatchQueue(engine, max_batch_size=8, wait_s=0.02)
        queue.start()
        futures = [queue.enqueue(Request(prompt=p)) for p in ("ab", "boom", "cd")]
        results = await asyncio.gather(*futures, return_exceptions=True)
        await queue.close()
        return results, queue.stats

    results, stats = asyncio.run(go())
    assert results[0].text == "ba" and results[2].text == "dc"
    assert isinstance(results[1], RuntimeError)
    assert stats.batch_sizes == [3, 1, 1, 1] and stats.retried == 3


def test_a_row_error_fails_that_row_only():
    class OneBadRow(FakeEngine):
        def generate_batch(self, requests, on_text=None):
            return [Completion("", 1, 0, "error", "non-finite") if r.prompt == "bad" else Completion("ok", 1, 1, "stop")
                    for r in requests]

    async def go():
        queue = BatchQueue(OneBadRow(), max_batch_size=8, wait_s=0.02)
        queue.start()
        futures = [queue.enqueue(Request(prompt=p)) for p in ("a", "bad", "b")]
        results = await asyncio.gather(*futures, return_exceptions=True)
        await queue.close()
        return results

    from tailorkit.errors import GenerationError

    results = asyncio.run(go())
    assert [r.text for r in (results[0], results[2])] == ["ok", "ok"]
    assert isinstance(results[1], GenerationError) and "non-finite" in str(results[1])


def test_a_full_queue_refuses_at_once():
    from tailorkit.infer.batching import QueueFull

    engine = FakeEngine()  # blocks until released, so requests stay queued

    async def go():
        queue = BatchQueue(engine, max_batch_size=1, wait_s=0.01, max_queue=2)
        queue.start()
        first = queue.enqueue(Request(prompt="a"))
        await asyncio.sleep(0.05)  # the worker took it: generating, no longer waiting
        waiting = [queue.enqueue(Request(prompt=p)) for p in ("b", "c")]
        with pytest.raises(QueueFull, match="--max_queue"):
            queue.enqueue(Request(prompt="d"))
        engine.release.set()
        done = await asyncio.gather(first, *waiting)
        await queue.close()
        return [c.text for c in done]

    assert asyncio.run(go()) == ["a", "b", "c"]
