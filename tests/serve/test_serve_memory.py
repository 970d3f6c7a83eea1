"""Memory of a `tailorkit deploy` process (its own process, resident memory read with psutil) stays bounded:
image bombs are refused before they are decoded, and after a burst of large requests resident memory returns
near its baseline."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from serve_helpers import data_uri, image_chat
from tailorkit.testing import bomb_png

BOUND_MB = 100  # the most resident memory may grow over its baseline: during bombs, and after a burst
MB = 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def deployed(tiny_vl_dir, tmp_path_factory):
    """(base URL, psutil.Process) of `tailorkit deploy` running in its own process."""
    port, log = free_port(), tmp_path_factory.mktemp("deploy") / "server.log"
    cmd = [sys.executable, "-m", "tailorkit", "deploy", "--model", str(tiny_vl_dir), "--port", str(port),
           "--torch_dtype", "float32", "--served_model_name", "tiny-vl", "--max_new_tokens", "4"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class PeakRss:
    """Samples a process's resident memory on a thread while the block runs."""

    def __init__(self, proc: psutil.Process):
        self.proc, self.peak, self._stop = proc, 0, threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def settled_rss(proc: psutil.Process, timeout_s: float = 20) -> int:
    """Resident memory once it has stopped changing (the server releases memory a moment after the last request
    ends): ten readings 0.1 s apart within 2 MB of each other."""
    readings, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        readings = (readings + [proc.memory_info().rss])[-10:]
        if len(readings) == 10 and max(readings) - min(readings) < 2 * MB:
            break
        time.sleep(0.1)
    return readings[-1]


def burst(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async def go():
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(*(http.post(url + "/v1/chat/completions", json=b) for b in bodies))
    return asyncio.run(go())


def png(size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_image_bombs_are_refused_with_memory_under_the_bound(deployed, capsys):
    url, proc = deployed
    assert all(r.status_code == 200 for r in burst(url, [image_chat(data_uri(png(64)))] * 3))  # warm up
    base = settled_rss(proc)
    with PeakRss(proc) as peak:
        answers = burst(url, [image_chat(data_uri(bomb_png()))] * 4)  # 4 x 20 KB that decode to 507 MB each
    assert [r.status_code for r in answers] == [400] * 4
    assert all("--max_image_pixels" in r.json()["error"]["message"] for r in answers)
    with capsys.disabled():
        print(f"\n[memory] 4 concurrent 13000x13000 PNG bombs: resident {base / MB:.0f} MB before, peak "
              f"{peak.peak / MB:.0f} MB (+{(peak.peak - base) / MB:.0f} MB)")
    assert peak.peak - base < BOUND_MB * MB


@pytest.mark.slow
def test_memory_returns_near_baseline_after_a_burst_of_large_requests(deployed, capsys):
    url, proc = deployed
    big = image_chat(data_uri(png(3000)))  # 9 M pixels: allowed, and 27 MB once decoded
    assert [r.status_code for r in burst(url, [big] * 6)] == [200] * 6  # warm up: threads, arenas, code paths
    base = settled_rss(proc)
    many = {"model": "tiny-vl", "messages": [{"role": "user", "content": "x"}] * 300_000}  # an 11 MB body
    with PeakRss(proc) as peak:
        start = time.perf_counter()
        huge = burst(url, [many])[0]
        refused_s = time.perf_counter() - start
        answers = burst(url, [big] * 6)
    after = settled_rss(proc)
    assert huge.status_code == 422 and huge.json()["error"]["param"] == "messages"
    assert [r.status_code for r in answers] == [200] * 6
    with capsys.disabled():
        print(f"\n[memory] 300k-message body refused in {refused_s:.2f} s; 6 concurrent 3000x3000 images: resident "
              f"{base / MB:.0f} MB before, peak {peak.peak / MB:.0f} MB, {after / MB:.0f} MB after "
              f"(+{(after - base) / MB:.0f} MB)")
    assert peak.peak - base > BOUND_MB * MB  # the burst did cost memory, so the test can see it kept
    assert after - base < BOUND_MB * MB
