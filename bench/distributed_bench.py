"""Tokens/s and peak memory per rank of the distributed engines on the tiny Qwen2: DDP, ZeRO-2, ZeRO-3, FSDP2.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=src python bench/distributed_bench.py [--samples 64] [--nproc N]

Each engine trains the same data (full fine-tuning, fp32, batch 2 per rank, one epoch) in its own torchrun job
of N processes: N = the visible GPUs (nccl) or 2 CPU processes (gloo) without one, so the same command runs
unchanged on a GPU machine. Per rank it prints the real (non-padding) tokens per second of the training loop
and the peak memory: GPU memory allocated on a GPU, the process's peak RSS on CPU. The last column is each
engine's tokens/s relative to DDP's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ENGINES = {"ddp": [], "zero2": ["--deepspeed", "zero2"], "zero3": ["--deepspeed", "zero3"],
           "fsdp2": ["--fsdp", "full_shard"]}


def child(engine: str, model: str, data: str, out: str) -> None:
    """One rank of one engine's job: train, then write this rank's measurements to <out>/<engine>-<rank>.json."""
    import torch

    from _measure import CountingCollator, Timer, peak_rss_mib
    from tailorkit.cli import parse
    from tailorkit.train.recipe import prepare

    argv = ["--model", model, "--dataset", data, "--train_type", "full", "--torch_dtype", "float32",
            "--per_device_train_batch_size", "2", "--num_train_epochs", "1", "--max_length", "1024",
            "--save_strategy", "no", "--logging_steps", "1000000", "--output_dir", f"{out}/{engine}",
            *ENGINES[engine]]
    timer = Timer(time.perf_counter())
    run = prepare(parse("sft", argv), "sft", callbacks=[timer])
    counting = CountingCollator(run.trainer.data_collator)
    run.trainer.data_collator = counting
    run.trainer.train()
    seconds = timer.end - timer.start
    cuda = torch.cuda.is_available()
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else peak_rss_mib()
    rank = run.trainer.args.process_index
    Path(out, f"{engine}-{rank}.json").write_text(json.dumps({
        "tokens_per_s": counting.real / seconds, "peak_mib": peak, "memory": "GPU allocated" if cuda else "peak RSS",
        "steps": run.trainer.state.global_step, "world": run.trainer.args.world_size}))


def write_data(path: Path, n: int) -> Path:
    words = "red green blue yellow circle square triangle small large bright dark shape colour".split()
    rows = []
    for i in range(n):
        text = " ".join(words[(i * 7 + j) % len(words)] for j in range(20 + (i * 37) % 60))
        rows.append({"messages": [{"role": "user", "content": f"Describe item {i}."},
                                  {"role": "assistant", "content": text}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    import torch

    from tailorkit.models.tiny import build_qwen2

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--nproc", type=int, default=torch.cuda.device_count() or 2)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tailorkit-dist-bench-"))
    build_qwen2(root / "model")
    data = write_data(root / "data.jsonl", args.samples)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    results = {}
    for engine in ENGINES:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), __file__, "--child", engine, str(root / "model"),
               str(data), str(root)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"{engine} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
        results[engine] = [json.loads(Path(root, f"{engine}-{r}.json").read_text()) for r in range(args.nproc)]
    base = sum(r["tokens_per_s"] for r in results["ddp"])
    first = results["ddp"][0]
    print(f"tiny Qwen2, full fine-tuning fp32, {args.samples} samples, batch 2 per rank, {first['world']} ranks, "
          f"{first['steps']} steps; memory = {first['memory']} per rank")
    print(f"{'engine':<8} {'rank':>4} {'tokens/s':>10} {'peak MiB':>10} {'tokens/s vs ddp':>16}")
    for engine, ranks in results.items():
        total = sum(r["tokens_per_s"] for r in ranks)
        for rank, r in enumerate(ranks):
            ratio = f"{total / base:.2f}" if rank == 0 else ""  # all ranks' tokens/s over DDP's
            print(f"{engine:<8} {rank:>4} {r['tokens_per_s']:>10.0f} {r['peak_mib']:>10.1f} {ratio:>16}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        main()
