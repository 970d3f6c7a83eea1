"""Load: 32 concurrent clients complete every request, and concurrent requests are generated in shared batches."""

from __future__ import annotations

import asyncio

import pytest

from serve_helpers import API_KEY
from tailorkit.testing import run_load


@pytest.mark.slow
def test_32_concurrent_clients_all_succeed_in_shared_batches(server):
    url, app = server
    stats = app.state.queue.stats
    before = len(stats.batch_sizes)
    words = ["red", "green", "blue", "circle", "square", "star"]
    bodies = [{"model": ["tiny-vl", "alpha", "beta"][i % 3], "max_tokens": 4,
               "messages": [{"role": "user", "content": f"What colour is the {words[i % len(words)]}? {i}"}]}
              for i in range(96)]
    report = asyncio.run(run_load(url, bodies, clients=32, api_key=API_KEY))
    assert report.failures == [], report.failures[:3]
    assert len(report.latencies) == len(bodies)
    sizes = stats.batch_sizes[before:]
    assert sum(sizes) == len(bodies)
    assert max(sizes) > 1 and len(sizes) < len(bodies), sizes


def test_load_report_percentiles():
    from tailorkit.testing import LoadReport

    r = LoadReport(seconds=2.0, latencies=[0.4, 0.1, 0.3, 0.2])
    assert (r.percentile(0.5), r.percentile(0.99), r.requests_per_s) == (0.2, 0.4, 2.0)


@pytest.mark.slow
def test_a_mixed_load_of_32_clients_has_no_5xx_and_no_dropped_connections(server):
    """Text chats, image chats, streamed image chats and text completions at once (was: ~1 in 5 failed)."""
    from serve_helpers import data_uri, png_bytes
    from tailorkit.testing import mixed_calls

    calls = mixed_calls(96, 4, "tiny-vl", data_uri(png_bytes((0, 200, 0))))
    report = asyncio.run(run_load(server[0], calls, clients=32, api_key=API_KEY, timeout_s=120))
    print(f"\n[mixed load] {report.summary()}")
    assert report.failures == [], report.failures[:3]
    assert len(report.latencies) == len(calls)
