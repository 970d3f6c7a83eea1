"""Abuse benchmark of `tailorkit deploy` (its own process, on 127.0.0.1, a tiny random Qwen2.5-VL by default).

1. Abandoned streams: the latency of a short request, before and after N clients open a stream of
   --long_tokens tokens, read two events and hang up.
2. Memory: resident memory of the server process (psutil) at baseline, at its peak and after, for
   concurrent decompression bombs (20 KB PNGs of 13000x13000 pixels), an 11 MB body of 300k messages,
   and a burst of large (3000x3000) images.

--src runs the server from another source tree (e.g. an older checkout's src/) for a before/after table:

    python bench/serve_hardening.py
    python bench/serve_hardening.py --src /tmp/before/src
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import psutil
from _measure import model_or_tiny_vl

from tailorkit.testing import bomb_png

MB = 2**20


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def solid_png(size: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


def chat(content, **kw) -> dict:
    return {"model": "bench", "max_tokens": 8, "messages": [{"role": "user", "content": content}], **kw}


def image_chat(uri: str) -> dict:
    return chat([{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "What is it?"}])


class Server:
    """`tailorkit deploy` in its own process."""

    def __init__(self, model: str, src: str | None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        if src:
            env["PYTHONPATH"] = src
        cmd = [sys.executable, "-m", "tailorkit", "deploy", "--model", model, "--port", str(port), "--torch_dtype",
               "float32", "--served_model_name", "bench", "--max_tokens_limit", "4096"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        self.ps = psutil.Process(self.proc.pid)

    def rss(self) -> float:
        return self.ps.memory_info().rss / MB

    def settled_rss(self, timeout_s: float = 20) -> float:
        readings, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            readings = (readings + [self.rss()])[-10:]
            if len(readings) == 10 and max(readings) - min(readings) < 2:
                break
            time.sleep(0.1)
        return readings[-1]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def burst(url: str, bodies: list[dict], timeout_s: float = 600) -> list[tuple[int, float]]:
    """(status, seconds) of each body, all sent at once; a dropped connection counts as status 0."""
    async def one(http, body):
        start = time.perf_counter()
        try:
            status = (await http.post(url + "/v1/chat/completions", json=body)).status_code
        except httpx.HTTPError:
            status = 0
        return status, time.perf_counter() - start

    async def go():
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            return await asyncio.gather(*(one(http, b) for b in bodies))
    return asyncio.run(go())


def peak_during(server: Server, fn):
    peak, stop = [server.rss()], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], server.rss())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        stop.set()
        thread.join()
    return result, peak[0]


async def abandon(url: str, n: int, tokens: int) -> None:
    async def one(http, i):
        async with http.stream("POST", url + "/v1/chat/completions",
                               json=chat(f"Keep talking {i}", max_tokens=tokens, stream=True)) as resp:
            seen = 0
            async for line in resp.aiter_lines():
                seen += line.startswith("data: ")
                if seen > 2:
                    break

    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*(one(http, i) for i in range(n)))


def disconnects(server: Server, n: int, tokens: int) -> None:
    quick = chat("What colour is the sky?")
    burst(server.url, [quick])
    before = min(burst(server.url, [quick])[0][1] for _ in range(3))
    asyncio.run(abandon(server.url, n, tokens))
    time.sleep(0.5)
    status, after = burst(server.url, [quick])[0]
    print(f"abandoned streams: next request {before * 1000:.0f} ms before {n} clients hung up on streams of "
          f"{tokens} tokens, {after * 1000:.0f} ms right after (HTTP {status}); server CPU afterwards "
          f"{server.ps.cpu_percent(interval=2.0):.0f}%")


def memory(server: Server) -> None:
    big = image_chat(data_uri(solid_png(3000)))
    burst(server.url, [big] * 6)
    base = server.settled_rss()
    print(f"memory: baseline {base:.0f} MB (after a warm-up burst)")
    bomb = image_chat(data_uri(bomb_png()))
    answers, peak = peak_during(server, lambda: burst(server.url, [bomb] * 2))
    print(f"  2 concurrent 13000x13000 PNG bombs: HTTP {[s for s, _ in answers]}, peak +{peak - base:.0f} MB, "
          f"after +{server.settled_rss() - base:.0f} MB")
    many = chat("x")
    many["messages"] = many["messages"] * 300_000
    answers, peak = peak_during(server, lambda: burst(server.url, [many]))
    print(f"  an 11 MB body of 300k messages: HTTP {answers[0][0]} in {answers[0][1]:.2f} s, peak +{peak - base:.0f} "
          f"MB, after +{server.settled_rss() - base:.0f} MB")
    answers, peak = peak_during(server, lambda: burst(server.url, [big] * 6))
    print(f"  6 concurrent 3000x3000 images: HTTP {sorted({s for s, _ in answers})}, peak +{peak - base:.0f} MB, "
          f"after +{server.settled_rss() - base:.0f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory (default: a tiny random Qwen2.5-VL built in a temp dir)")
    p.add_argument("--src", help="serve from this source tree (put first on PYTHONPATH), e.g. an older checkout")
    p.add_argument("--clients", type=int, default=20, help="clients that hang up on their streams")
    p.add_argument("--long_tokens", type=int, default=2048, help="max_tokens of the abandoned streams")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = model_or_tiny_vl(args.model, tmp)
        print(f"server from {args.src or 'this checkout'}, model {model}")
        server = Server(model, args.src)
        try:
            disconnects(server, args.clients, args.long_tokens)
            memory(server)
        finally:
            server.close()


if __name__ == "__main__":
    main()
