"""Shared measuring helpers of the bench scripts: token counting collator, timing callback, peak RSS, tiny model."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time

from transformers import TrainerCallback


class CountingCollator:
    """Wraps a collator; counts real tokens (non-padding) and all token slots of the batches it builds."""

    def __init__(self, inner):
        self.inner, self.real, self.slots, self.samples = inner, 0, 0, 0

    def __call__(self, items):
        batch = self.inner(items)
        ids = batch["input_ids"]
        self.slots += ids.numel()
        self.real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
        self.samples += sum(len(x) if isinstance(x, list) else 1 for x in items)
        return batch


class Timer(TrainerCallback):
    """Wall time of the training loop and of the first optimizer step (from ``t0``)."""

    def __init__(self, t0: float):
        self.t0, self.start, self.end, self.first_step = t0, None, None, None

    def on_train_begin(self, args, state, control, **kw):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self.first_step is None:
            self.first_step = time.perf_counter() - self.t0

    def on_train_end(self, args, state, control, **kw):
        self.end = time.perf_counter()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_once(cfg, *, t0: float, stock_attention: bool = False) -> dict:
    """Prepare ``cfg`` as ``tailorkit sft`` does (the recipe), train it (no final save); return the measurements."""
    import tempfile
    from pathlib import Path

    from tailorkit.train.recipe import prepare

    cfg.train.output_dir = tempfile.mkdtemp(prefix="tailorkit-bench-")
    timer = Timer(t0)
    run = prepare(cfg, "sft", callbacks=[timer])
    if stock_attention:
        run.bundle.model.set_attn_implementation("sdpa")
    counting = CountingCollator(run.trainer.data_collator)
    run.trainer.data_collator = counting  # counts the tokens of every batch the trainer builds
    run.trainer.train()
    seconds = timer.end - timer.start
    samples = [s for x in run.train_set for s in (x if isinstance(x, list) else [x])]  # packs hold samples
    lengths = sorted(len(e) for e in samples)
    return {"tokens_per_s": counting.real / seconds, "samples_per_s": counting.samples / seconds,
            "padding_fraction": 1 - counting.real / max(counting.slots, 1), "train_s": seconds,
            "time_to_first_step_s": timer.first_step, "peak_rss_mib": peak_rss_mib(), "tokens": counting.real,
            "samples": counting.samples, "steps": run.trainer.state.global_step,
            "length_min_median_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
            "output_dir": str(Path(cfg.train.output_dir))}


def run_child(script: str, args: list[str]) -> dict:
    """Run ``script --one ...`` in a fresh process (its own peak RSS); return the JSON it printed."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    shutil.rmtree(result.pop("output_dir"), ignore_errors=True)
    return result


def print_result(result: dict) -> None:
    """The child's half of ``run_child``."""
    print("RESULT " + json.dumps(result))


def model_or_tiny_vl(model: str | None, folder: str) -> str:
    """``model``, or a tiny random Qwen2.5-VL built in ``folder`` when it is None."""
    if model is not None:
        return model
    from pathlib import Path

    from tailorkit.models.tiny import build_qwen2_5_vl

    path = str(Path(folder) / "tiny-vl")
    build_qwen2_5_vl(path)
    return path
