"""Seconds per optimizer step of each `tailorkit rlhf` algorithm on the tiny text model (CPU, LoRA).

Prints one line per algorithm: rlhf_type, steps, seconds per step (from the Trainer's train_runtime).
Run: PYTHONPATH=src OMP_NUM_THREADS=1 python bench/rlhf_steps.py [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tailorkit.cli import parse
from tailorkit.models.tiny import build_qwen2
from tailorkit.train.rlhf import rlhf

WORDS = ["red", "green", "blue", "yellow", "purple", "orange", "circle", "square"]


def _data(folder: Path) -> dict[str, str]:
    pref = [{"messages": [{"role": "user", "content": f"Is the {w} fine?"}, {"role": "assistant", "content": "yes"}],
             "rejected_response": "no the dog"} for w in WORDS]
    kto = [{"messages": r["messages"], "label": i % 2 == 0} for i, r in enumerate(pref)]
    prompts = [{"messages": [{"role": "user", "content": f"What colour is the {w}?"}], "solution": "red"} for w in WORDS]
    out = {}
    for name, rows in (("pref", pref), ("kto", kto), ("prompts", prompts)):
        out[name] = str(folder / f"{name}.jsonl")
        Path(out[name]).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    steps = ap.parse_args().steps
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_qwen2(tmp / "model")
        data = _data(tmp)
        rows = []
        for kind in ("dpo", "orpo", "simpo", "cpo", "kto", "rm", "grpo"):
            ds = {"kto": data["kto"], "grpo": data["prompts"]}.get(kind, data["pref"])
            extra = ["--reward_funcs", "accuracy", "soft_overlong", "--max_completion_length", "16"] \
                if kind == "grpo" else []
            cfg = parse("rlhf", ["--rlhf_type", kind, "--model", str(tmp / "model"), "--dataset", ds,
                                 "--torch_dtype", "float32", "--per_device_train_batch_size", "4",
                                 "--max_steps", str(steps), "--save_strategy", "no", "--logging_steps", str(steps),
                                 "--output_dir", str(tmp / f"out-{kind}"), *extra])
            result = rlhf(cfg)
            runtime = next(r["train_runtime"] for r in result.log_history if "train_runtime" in r)
            rows.append((kind, steps, runtime / steps))
    print(f"{'rlhf_type':<10}{'steps':>6}{'s/step':>10}")
    for kind, n, sec in rows:
        print(f"{kind:<10}{n:>6}{sec:>10.4f}")


if __name__ == "__main__":
    main()
