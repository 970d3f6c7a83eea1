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
