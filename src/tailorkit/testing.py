"""Helpers for tests and benchmarks that ship with the package (bench/ uses them as well as tests/).
Nothing in the training or serving path imports this module.

A load generator for the OpenAI-compatible server (`tailorkit deploy`): concurrent clients, latency
percentiles, failures. A call is a POST to /v1/chat/completions or /v1/completions, streamed or not;
`mixed_calls` interleaves text chats, image chats, streamed image chats and text completions. A failure is
counted by kind: an HTTP 4xx or 5xx, a dropped connection, or a stream that carries an error event or does not
end with [DONE]. And random (non-zero) LoRA adapters for tiny models.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
WORDS = ["red", "green", "blue", "yellow", "circle", "square", "triangle", "star"]


@dataclass(frozen=True)
class Call:
    path: str  # CHAT or COMPLETIONS
    body: dict


@dataclass
class LoadReport:
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of successful requests, in seconds
    failures: list[str] = field(default_factory=list)  # one line per failed request
    kinds: Counter = field(default_factory=Counter)  # failures by kind: 4xx, 5xx, dropped, stream error

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency at quantile ``q`` in [0, 1] (nearest rank)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    def fail(self, kind: str, line: str) -> None:
        self.kinds[kind] += 1
        self.failures.append(f"{kind}: {line}")

    def summary(self) -> str:
        ms = {q: 1000 * self.percentile(q) for q in (0.5, 0.9, 0.99)}
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))
        return (f"{len(self.latencies)} ok, {len(self.failures)} failed{f' ({kinds})' if kinds else ''} in "
                f"{self.seconds:.2f} s: {self.requests_per_s:.1f} requests/s; latency p50 {ms[0.5]:.0f} ms, "
                f"p90 {ms[0.9]:.0f} ms, p99 {ms[0.99]:.0f} ms")


def bomb_png(width: int = 13000, height: int = 13000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: ~20 KB that Pillow decodes to 169 MB (507 MB as
    RGB), a decompression bomb. Written row by row, so building it costs no memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def chat_calls(n: int, max_tokens: int, model: str) -> list[Call]:
    return [Call(CHAT, {"model": model, "max_tokens": max_tokens, "temperature": 0, "messages": [
        {"role": "user", "content": f"What colour is the {WORDS[i % len(WORDS)]} shape? {i}"}]}) for i in range(n)]


def mixed_calls(n: int, max_tokens: int, model: str, image_uri: str) -> list[Call]:
    """Text chats, image chats, streamed image chats and text completions, in turn."""
    calls = []
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        image = [{"type": "image_url", "image_url": {"url": image_uri}}, {"type": "text", "text": f"Is it {word}?"}]
        base = {"model": model, "max_tokens": max_tokens}
        calls.append([Call(CHAT, {**base, "messages": [{"role": "user", "content": f"Name a {word} thing. {i}"}]}),
                      Call(CHAT, {**base, "messages": [{"role": "user", "content": image}]}),
                      Call(CHAT, {**base, "stream": True, "messages": [{"role": "user", "content": image}]}),
                      Call(COMPLETIONS, {**base, "prompt": f"The {word} shape number {i} is"})][i % 4])
    return calls


async def _streamed(http, url: str, body: dict, report: LoadReport) -> bool:
    async with http.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            report.fail(f"{resp.status_code // 100}xx", f"HTTP {resp.status_code}: {resp.text[:200]}")
            return False
        lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
    errors = [x for x in lines if x != "data: [DONE]" and "error" in json.loads(x[6:])]
    if errors or not lines or lines[-1] != "data: [DONE]":
        report.fail("stream error", (errors or lines or ["(empty stream)"])[-1][:200])
        return False
    return True


async def _plain(http, url: str, body: dict, report: LoadReport) -> bool:
    resp = await http.post(url, json=body)
    if resp.status_code != 200 or not resp.json().get("choices"):
        report.fail(f"{resp.status_code // 100}xx", f"HTTP {resp.status_code}: {resp.text[:200]}")
        return False
    return True


async def _client(http, base_url: str, calls: asyncio.Queue, report: LoadReport) -> None:
    while True:
        try:
            call = calls.get_nowait()
        except asyncio.QueueEmpty:
            return
        start = time.perf_counter()
        send = _streamed if call.body.get("stream") else _plain
        try:
            ok = await send(http, base_url + call.path, call.body, report)
        except Exception as e:  # noqa: BLE001 - every failure is counted and shown
            report.fail("dropped", f"{type(e).__name__}: {e}")
            continue
        if ok:
            report.latencies.append(time.perf_counter() - start)


async def run_load(base_url: str, calls: list[Call | dict], *, clients: int = 32, api_key: str | None = None,
                   timeout_s: float = 300) -> LoadReport:
    """Send every call from ``clients`` concurrent connections (a plain dict is a chat request body)."""
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for c in calls:
        queue.put_nowait(c if isinstance(c, Call) else Call(CHAT, c))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    report = LoadReport(seconds=0.0)
    async with httpx.AsyncClient(headers=headers, timeout=timeout_s, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(_client(http, base_url, queue, report) for _ in range(clients)))
        report.seconds = time.perf_counter() - start
    return report


LLM_ATTENTION = ("q_proj", "v_proj", "o_proj")


def build_random_lora(model_dir: str | Path, out: str | Path, seed: int, rank: int = 4, alpha: int | None = None,
                      target_modules=LLM_ATTENTION) -> Path:
    """Save a peft LoRA adapter for ``model_dir`` with random (seeded, non-zero) A and B; returns ``out``.

    Non-zero B makes adapters tell apart by their answers; default targets are the LLM attention.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    multimodal = hasattr(AutoConfig.from_pretrained(model_dir), "vision_config")
    auto = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha or 16 * rank, target_modules=target_modules,
                        init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return Path(out)
