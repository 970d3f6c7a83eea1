"""sft throughput of the tiny models, for comparing later work: tokens/s, samples/s, peak RSS and time to
first step (from process start, model load and encoding included), padded and packed.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=src python bench/sft_throughput.py [--samples 64]

Text: tiny Qwen2 on the skewed-length dataset (lengths 32..512 here); vision: tiny Qwen2.5-VL on the demo's
shapes task (56x56 images). Full fine-tuning, fp32, batch 4 (samples padded, or packed rows of 512 tokens), one epoch; each run in its
own process.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # time to first step counts from here: imports, model load and encoding included

import argparse  # noqa: E402
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _measure import print_result, run_child, train_once  # noqa: E402

RUNS = {"qwen2 padded": {}, "qwen2 packing": {"packing": True},
        "qwen2_5_vl padded": {}, "qwen2_5_vl packing": {"packing": True}}


def one(run: str, model: str, data: str, batch: int) -> dict:
    from tailorkit.config import SftConfig
    from tailorkit.config.loading import build_config

    settings = {"model": model, "dataset": [data], "train_type": "full", "torch_dtype": "float32",
                "max_length": 512, "num_train_epochs": 1, "save_strategy": "no", "logging_steps": 10 ** 6,
                "per_device_train_batch_size": batch, **RUNS[run]}
    return train_once(build_config(SftConfig, settings), t0=T0)


def main() -> None:
    ap = argparse.ArgumentParser(description="tiny-model sft throughput")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print_result(one(a.one, a.model, a.data, a.batch))
        return

    from skewed_data import skewed_rows
    from transformers import AutoTokenizer

    from tailorkit.demo.shapes import write_split
    from tailorkit.models.tiny import build_qwen2, build_qwen2_5_vl

    work = Path(tempfile.mkdtemp(prefix="tailorkit-sftbench-"))
    try:
        build_qwen2(work / "qwen2")
        build_qwen2_5_vl(work / "qwen2_5_vl")
        text = work / "text.jsonl"
        rows = skewed_rows(AutoTokenizer.from_pretrained(work / "qwen2"), a.samples, high=512)
        text.write_text("".join(json.dumps(r) + "\n" for r in rows))
        data = {"qwen2": text, "qwen2_5_vl": write_split(work / "shapes", "train", a.samples, seed=0)}
        print(f"{'run':<22}{'tokens/s':>10}{'samples/s':>11}{'peak RSS MiB':>14}{'first step s':>14}{'padding':>9}")
        for run in RUNS:
            fam = run.split()[0]
            r = run_child(__file__, ["--one", run, "--model", str(work / fam), "--data", str(data[fam]),
                                     "--batch", str(a.batch)])
            print(f"{run:<22}{r['tokens_per_s']:>10.0f}{r['samples_per_s']:>11.1f}{r['peak_rss_mib']:>14.0f}"
                  f"{r['time_to_first_step_s']:>14.1f}{100 * r['padding_fraction']:>8.1f}%", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
