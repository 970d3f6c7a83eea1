"""Helpers for tests and benchmarks that ship with the package (bench/ uses them as well as tests/).

A load generator for the OpenAI-compatible server (`tailorkit deploy`): concurrent clients, latency
percentiles, failures; and random (non-zero) LoRA adapters for tiny models. Nothing in the training or
serving path imports this module.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LoadReport:
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of successful requests, in seconds
    failures: list[str] = field(default_factory=list)  # one line per failed request

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency at quantile ``q`` in [0, 1] (nearest rank)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    def summary(self) -> str:
        ms = {q: 1000 * self.percentile(q) for q in (0.5, 0.9, 0.99)}
        return (f"{len(self.latencies)} ok, {len(self.failures)} failed in {self.seconds:.2f} s: "
                f"{self.requests_per_s:.1f} requests/s; latency p50 {ms[0.5]:.0f} ms, p90 {ms[0.9]:.0f} ms, "
                f"p99 {ms[0.99]:.0f} ms")


async def _client(http, url: str, bodies: asyncio.Queue, report: LoadReport) -> None:
    while True:
        try:
            body = bodies.get_nowait()
        except asyncio.QueueEmpty:
            return
        start = time.perf_counter()
        try:
            resp = await http.post(url, json=body)
            ok = resp.status_code == 200 and resp.json()["choices"]
            if not ok:
                report.failures.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
                continue
        except Exception as e:  # noqa: BLE001 - every failure is counted and shown
            report.failures.append(f"{type(e).__name__}: {e}")
            continue
        report.latencies.append(time.perf_counter() - start)


async def run_load(base_url: str, bodies: list[dict], *, clients: int = 32, api_key: str | None = None,
                   timeout_s: float = 300) -> LoadReport:
    """POST every body to /v1/chat/completions from ``clients`` concurrent connections."""
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    report = LoadReport(seconds=0.0)
    async with httpx.AsyncClient(headers=headers, timeout=timeout_s, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(_client(http, base_url + "/v1/chat/completions", queue, report)
                               for _ in range(clients)))
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
