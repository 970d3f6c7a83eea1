"""Packing benchmark: tokens/s, padding fraction and peak RSS of padded, group_by_length, packing and
padding-free training on the bundled skewed-length dataset (tiny Qwen2, CPU by default).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=src python bench/packing_bench.py [--samples 256]

Each mode runs in its own process (so peak RSS is its own), over one epoch of the same samples.
The padded baseline is batch size 8 in random order; group_by_length and padding-free use batch 8;
packing uses rows of --max_length tokens, --pack_batch rows per step.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # time to first step counts from here: imports, model load and encoding included

import argparse  # noqa: E402
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _measure import print_result, run_child, train_once  # noqa: E402

MODES = {
    "padded": {},
    "group_by_length": {"group_by_length": True},
    "packing": {"packing": True},
    "padding_free": {"padding_free": True},
    "packing_stock_sdpa": {"packing": True},  # packed rows under transformers' own sdpa: the T x T cost
}


def one(mode: str, model: str, data: str, batch: int, pack_batch: int, max_length: int) -> dict:
    from tailorkit.config import SftConfig
    from tailorkit.config.loading import build_config

    settings = {"model": model, "dataset": [data], "train_type": "full", "torch_dtype": "float32",
                "max_length": max_length, "num_train_epochs": 1, "save_strategy": "no", "logging_steps": 10 ** 6,
                "per_device_train_batch_size": pack_batch if "packing" in mode else batch, **MODES[mode]}
    cfg = build_config(SftConfig, settings)
    return train_once(cfg, t0=T0, stock_attention=mode == "packing_stock_sdpa")


def main() -> None:
    ap = argparse.ArgumentParser(description="packing vs padding benchmark")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pack_batch", type=int, default=2, help="packed rows per step")
    ap.add_argument("--max_length", type=int, default=2048)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print_result(one(a.one, a.model, a.data, a.batch, a.pack_batch, a.max_length))
        return

    from skewed_data import write
    from transformers import AutoTokenizer

    from tailorkit.models.tiny import build_qwen2

    work = Path(tempfile.mkdtemp(prefix="tailorkit-packbench-"))
    try:
        build_qwen2(work / "model")
        data = write(AutoTokenizer.from_pretrained(work / "model"), work / "skewed.jsonl", a.samples)
        results = {}
        for mode in a.modes:
            results[mode] = run_child(__file__, ["--one", mode, "--model", str(work / "model"), "--data", str(data),
                                                 "--batch", str(a.batch), "--pack_batch", str(a.pack_batch),
                                                 "--max_length", str(a.max_length)])
        report(results, a)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict, a) -> None:
    first = next(iter(results.values()))
    print(f"skewed dataset: {first['samples']} samples, {first['tokens']} tokens, encoded length "
          f"min/median/max {first['length_min_median_max']}; batch {a.batch} (packing: {a.pack_batch} rows of "
          f"{a.max_length})")
    print(f"{'mode':<20}{'tokens/s':>10}{'padding':>9}{'peak RSS MiB':>14}{'train s':>9}{'steps':>7}")
    for mode, r in results.items():
        print(f"{mode:<20}{r['tokens_per_s']:>10.0f}{100 * r['padding_fraction']:>8.1f}%{r['peak_rss_mib']:>14.0f}"
              f"{r['train_s']:>9.1f}{r['steps']:>7}")
    tps = {m: r["tokens_per_s"] for m, r in results.items()}
    for mode in ("packing", "padding_free", "group_by_length", "packing_stock_sdpa"):
        if mode in tps and "padded" in tps:
            print(f"{mode}/padded tokens/s ratio: {tps[mode] / tps['padded']:.2f}")
    if "packing" in tps and "group_by_length" in tps:
        print(f"packing/group_by_length tokens/s ratio: {tps['packing'] / tps['group_by_length']:.2f}")


if __name__ == "__main__":
    main()
