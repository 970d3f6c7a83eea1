"""Scale benchmark: rows -> (time to first step, peak RSS, training tokens/s) on the tiny Qwen2.5-VL and a
synthetic image task (64-128 px images), for 1k, 10k and 100k rows; cold (nothing cached) and warm (the
encoded-data cache of the cold run). Optionally the same against ms-swift (the anchor), measured in the
same run on the same model and data: give its `swift` executable (installed in its own virtual environment,
with torch's files hard-linked from this one, see ``same_torch_files``).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=src python bench/scale_rows.py \\
        [--rows 1000 10000 100000] [--swift /tmp/swift-venv/bin/swift] [--anchor_rows 400]

Every run is its own process, started here: time to first step runs from the process start to the first
optimizer step logged (logging.jsonl, written at each step by both tools); peak RSS is the largest VmHWM of
the process tree when training has ended (read from /proc: interpreter shutdown, which adds ~150 MiB to
torch processes in getrusage, is left out for both tools); tokens/s is the trainer's samples/s times the mean encoded length (the same
samples for both tools). Also printed: tokenization throughput on text rows in rows per CPU-second (one core).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
TARGETS = {"rss_growth": 0.10, "warm_first_step_s": 5.0, "rows_per_cpu_s": 1000, "first_step_ratio": 0.5,
           "rss_ratio": 0.8, "tokens_ratio": 1.2}


def write_task(work: Path, rows: int, images: int = 32) -> Path:
    """``rows`` image questions over a pool of ``images`` shapes of 64-128 px (sizes vary, so tokens vary)."""
    from PIL import Image, ImageDraw

    pool = work / "images"
    if not pool.is_dir():
        pool.mkdir(parents=True)
        for k in range(images):
            size = (64 + (k * 8) % 72, 128 - (k * 12) % 64)
            img = Image.new("RGB", size, "white")
            ImageDraw.Draw(img).rectangle([8, 8, size[0] - 8, size[1] - 8], fill=list(COLOURS.values())[k % 4])
            img.save(pool / f"{k}.png")
    path = work / f"task-{rows}.jsonl"
    names = list(COLOURS)
    with open(path, "w") as f:
        for i in range(rows):
            k = i % images
            f.write(json.dumps({"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                                             {"role": "assistant", "content": names[k % 4]}],
                                "images": [str(pool / f"{k}.png")]}) + "\n")
    return path


def timed_run(cmd: list[str], out: Path, log_glob: str, env: dict) -> dict:
    """Run ``cmd`` under GNU time; watch for the first step in the log file it writes; its final metrics."""
    printed = out.with_suffix(".out")
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    with open(printed, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
        first = peak = first_cpu = end = end_cpu = None
        while proc.poll() is None:
            rows = _log_rows(out, log_glob)
            if first is None and any("loss" in r for r in rows):
                first, first_cpu = time.perf_counter() - start, _tree_cpu_s(proc.pid)
            if peak is None and any("train_samples_per_second" in r for r in rows):
                peak = _tree_peak_rss_mib(proc.pid)  # training has ended; the process is saving and exiting
                end, end_cpu = time.perf_counter() - start, _tree_cpu_s(proc.pid)
            time.sleep(0.02)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{printed.read_text()[-4000:]}")
    rows = _log_rows(out, log_glob)
    final = next(r for r in reversed(rows) if "train_samples_per_second" in r)
    steps = max(int(r.get("step", 0) or str(r.get("global_step/max_steps", "0/0")).split("/")[0]) for r in rows
                if "loss" in r)
    return {"first_step_s": first if first is not None else wall, "first_step_cpu_s": first_cpu, "wall_s": wall,
            "peak_rss_mib": peak, "steps_per_cpu_s": (steps - 1) / max(end_cpu - first_cpu, 1e-9),
            "train_cpu_share": (end_cpu - first_cpu) / max(end - first, 1e-9),
            "samples_per_s": float(final["train_samples_per_second"])}


def _tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its descendants: time to first step on an idle
    machine, whatever else this one is running."""
    total = 0
    for pid in _tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def _tree_peak_rss_mib(root: int) -> float:
    """The largest peak RSS (VmHWM) among ``root`` and its descendants, read from /proc while they run."""
    peak = 0
    for pid in _tree(root):
        try:
            line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM"))
            peak = max(peak, int(line.split()[1]))
        except (OSError, StopIteration, ValueError):
            continue
    return peak / 1024


def _tree(root: int) -> set[int]:
    """``root`` and its live descendants."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def _log_rows(out: Path, log_glob: str) -> list[dict]:
    rows = []
    for path in out.glob(log_glob):
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line still being written
                continue
    return rows


COMMON = ["--torch_dtype", "float32", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1",
          "--max_length", "512", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
          "--dataloader_num_workers", "0", "--learning_rate", "1e-4"]


def ours(model: Path, data: Path, out: Path, cache: Path, length: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-m", "tailorkit", "sft", "--model", str(model), "--dataset", str(data),
           "--output_dir", str(out), "--train_type", "lora", "--dataset_cache_dir", str(cache), *COMMON, *length]
    return timed_run(cmd, out, "logging.jsonl", env)


def swift(binary: str, model: Path, data: Path, out: Path, length: list[str], env: dict) -> dict:
    cmd = [binary, "sft", "--model", str(model), "--model_type", "qwen2_5_vl", "--template", "qwen2_5_vl",
           "--dataset", str(data), "--output_dir", str(out), "--tuner_type", "lora", "--use_hf", "true",
           *COMMON, *length]
    return timed_run(cmd, out, "v*/logging.jsonl", env)


def same_torch_files(binary: str) -> bool:
    """Whether ms-swift's interpreter maps the same torch library files (inode) as this one: shared-library
    pages count in RSS as far as the page cache holds them, so two copies of one file measure differently."""
    python = Path(binary).with_name("python")
    out = subprocess.run([str(python), "-c", "import os, torch; print(os.stat(os.path.join(os.path.dirname("
                          "torch.__file__), 'lib', 'libtorch_cpu.so')).st_ino)"], capture_output=True, text=True)
    import torch

    mine = os.stat(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")).st_ino
    return out.stdout.strip() == str(mine)


def mean_length(model: Path, data: Path, cache: Path) -> float:
    """Mean encoded length (media tokens included) of the rows, from the encoded-data cache."""
    from tailorkit.config.train import ModelArgs
    from tailorkit.data.build import EncodeRequest, encoded_sets
    from tailorkit.models.load import bundle_processor
    from tailorkit.train.kinds import KINDS

    train, _, _ = encoded_sets(EncodeRequest("sft", (str(data),), max_length=512, cache_dir=str(cache)),
                               KINDS["sft"].rows, bundle_processor(ModelArgs(model=str(model))))
    return float(train.lengths.mean())


def tokenization_rate(model: Path, work: Path, rows: int = 5000) -> float:
    """Text rows encoded per CPU-second, one process (parse, check, render, tokenize, write the cache)."""
    from tailorkit.config.train import ModelArgs
    from tailorkit.data.build import EncodeRequest, encoded_sets
    from tailorkit.models.load import bundle_processor
    from tailorkit.train.kinds import KINDS

    data = work / "text.jsonl"
    shutil.rmtree(work / "text-cache", ignore_errors=True)
    with open(data, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus {i}? Answer briefly."},
                                             {"role": "assistant", "content": f"It is {2 * i}."}]}) + "\n")
    processor = bundle_processor(ModelArgs(model=str(model)))
    cpu = time.process_time()
    encoded_sets(EncodeRequest("sft", (str(data),), cache_dir=str(work / "text-cache")), KINDS["sft"].rows,
                 processor)
    return rows / (time.process_time() - cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description="rows -> time to first step, peak RSS, tokens/s (and vs ms-swift)")
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps of each scale run")
    ap.add_argument("--swift", help="ms-swift's `swift` executable (its own venv); the anchor columns need it")
    ap.add_argument("--anchor_rows", type=int, default=400, help="rows of the 1-epoch run against ms-swift")
    ap.add_argument("--work", help="work folder (default: a temporary one, removed after)")
    ap.add_argument("--anchor_only", action="store_true", help="only the run against ms-swift")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each tool against the anchor (best kept)")
    a = ap.parse_args()

    from tailorkit.models.tiny import build_qwen2_5_vl

    if a.swift and not same_torch_files(a.swift):
        print("note: ms-swift's venv has its own copy of torch's files; hard-link them to this venv's (same "
              "version: `cp -al`) or peak RSS compares page-cache residency, not the tools")

    work = Path(a.work or tempfile.mkdtemp(prefix="tailorkit-scale-"))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    try:
        model = work / "model"
        if not model.is_dir():
            build_qwen2_5_vl(model)
        if not a.anchor_only:
            print(f"tokenization, text rows, one process: {tokenization_rate(model, work):.0f} rows per CPU-second "
                  f"(target >= {TARGETS['rows_per_cpu_s']})")
        scale = {}
        for n in ([] if a.anchor_only else a.rows):
            data, cache = write_task(work, n), work / f"cache-{n}"
            shutil.rmtree(cache, ignore_errors=True)  # cold: nothing cached
            length = ["--max_steps", str(a.steps)]
            cold = ours(model, data, work / f"cold-{n}", cache, length, env)
            warm = ours(model, data, work / f"warm-{n}", cache, length, env)
            anchor = swift(a.swift, model, data, work / f"swift-{n}", length, env) if a.swift else None
            scale[n] = (cold, warm, anchor, mean_length(model, data, cache))
            _print_scale(scale)
        if a.swift:
            _anchor(a, model, work, env)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


def _print_scale(scale: dict) -> None:
    print("\nrows     | first step cold / warm: wall (CPU) s | peak RSS cold / warm MiB | tokens/s | "
          "ms-swift first step wall (CPU) s, RSS MiB")
    for n, (cold, warm, anchor, mean) in scale.items():
        sw = (f"{anchor['first_step_s']:.1f} ({anchor['first_step_cpu_s']:.1f}), {anchor['peak_rss_mib']:.0f}"
              if anchor else "-")
        print(f"{n:>8} | {cold['first_step_s']:>6.1f} ({cold['first_step_cpu_s']:.1f}) / "
              f"{warm['first_step_s']:.1f} ({warm['first_step_cpu_s']:.1f})  | "
              f"{cold['peak_rss_mib']:>8.0f} / {warm['peak_rss_mib']:<8.0f} | "
              f"{warm['samples_per_s'] * mean:>8.0f} | {sw}")
    rows = sorted(scale)
    if len(rows) > 1:
        lo, hi = scale[rows[0]], scale[rows[-1]]
        growth = max(hi[0]["peak_rss_mib"], hi[1]["peak_rss_mib"]) / max(lo[0]["peak_rss_mib"], lo[1]["peak_rss_mib"])
        print(f"peak RSS growth {rows[0]} -> {rows[-1]} rows: {100 * (growth - 1):+.1f}% "
              f"(target <= +{100 * TARGETS['rss_growth']:.0f}%); warm first step at {rows[-1]} rows: "
              f"{hi[1]['first_step_s']:.1f} s wall, {hi[1]['first_step_cpu_s']:.1f} s CPU (target <= "
              f"{TARGETS['warm_first_step_s']:.0f} s)")


def _best(results: list[dict]) -> dict:
    """Per measure, the best of repeated runs (least time and memory, most throughput)."""
    best = {}
    for key in results[0]:
        pick = max if key in ("samples_per_s", "steps_per_cpu_s", "train_cpu_share") else min
        best[key] = pick(r[key] for r in results)
    return best


def _anchor(a, model: Path, work: Path, env: dict) -> None:
    """One epoch of LoRA on the same rows, one process, CPU: tailorkit (cold: nothing cached) vs ms-swift."""
    data = write_task(work, a.anchor_rows)
    mean = mean_length(model, data, work / "anchor-lengths")
    epoch = ["--num_train_epochs", "1"]
    runs = {"ours": [], "swift": []}
    for _ in range(a.repeat):  # alternated, best of each: a shared machine slows runs at random
        shutil.rmtree(work / "anchor-cache", ignore_errors=True)  # cold: ms-swift has no cache either
        runs["ours"].append(ours(model, data, work / "anchor-ours", work / "anchor-cache", epoch, env))
        runs["swift"].append(swift(a.swift, model, data, work / "anchor-swift", epoch, env))
    mine, theirs = _best(runs["ours"]), _best(runs["swift"])
    ratios = {"first_step_ratio": mine["first_step_s"] / theirs["first_step_s"],
              "rss_ratio": mine["peak_rss_mib"] / theirs["peak_rss_mib"],
              "tokens_ratio": mine["samples_per_s"] / theirs["samples_per_s"],
              "tokens_cpu_ratio": mine["steps_per_cpu_s"] / theirs["steps_per_cpu_s"]}
    print(f"\nagainst ms-swift, {a.anchor_rows} rows, 1 epoch LoRA (mean {mean:.0f} tokens a sample), best of "
          f"{a.repeat} alternated runs each:")
    cpu = mine["first_step_cpu_s"] / theirs["first_step_cpu_s"]
    print(f"  time to first step  {mine['first_step_s']:.1f} s vs {theirs['first_step_s']:.1f} s  = "
          f"{ratios['first_step_ratio']:.2f}x (target <= {TARGETS['first_step_ratio']}x); CPU seconds "
          f"{mine['first_step_cpu_s']:.1f} vs {theirs['first_step_cpu_s']:.1f} = {cpu:.2f}x")
    print(f"  peak RSS            {mine['peak_rss_mib']:.0f} vs {theirs['peak_rss_mib']:.0f} MiB = "
          f"{ratios['rss_ratio']:.2f}x (target <= {TARGETS['rss_ratio']}x)")
    print(f"  training tokens/s   {mine['samples_per_s'] * mean:.0f} vs {theirs['samples_per_s'] * mean:.0f} = "
          f"{ratios['tokens_ratio']:.2f}x (target >= {TARGETS['tokens_ratio']}x); per CPU-second "
          f"{mine['steps_per_cpu_s'] * mean:.0f} vs {theirs['steps_per_cpu_s'] * mean:.0f} = "
          f"{ratios['tokens_cpu_ratio']:.2f}x (one sample a step; CPU used while training: "
          f"{mine['train_cpu_share']:.2f} vs {theirs['train_cpu_share']:.2f} cores)")


if __name__ == "__main__":
    main()
