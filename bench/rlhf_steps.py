"""Seconds per optimizer step and peak memory of each `tailorkit rlhf` algorithm on tiny models (LoRA).

Every variant runs in its own process (its own peak memory): dpo, orpo, simpo, cpo, kto, rm (text and
Qwen2.5-VL), ppo, gkd (on-policy half the time), grpo, grpo with DAPO's settings (dynamic sampling,
clip-higher, overlong filter, token-level loss) and multi-turn grpo. Prints one line per variant: steps,
seconds per step (from the Trainer's train_runtime), peak RSS of the process (MiB) and, on a GPU, peak
allocated GPU memory (MiB).
Run: PYTHONPATH=src OMP_NUM_THREADS=1 python bench/rlhf_steps.py [--steps 20] [--only grpo ppo]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _measure import peak_rss_mib, print_result, run_child

WORDS = ["red", "green", "blue", "yellow", "purple", "orange", "circle", "square"]
PLUGIN = '''
def try_again(messages, **columns):
    return {"role": "user", "content": "Try again."} if len(messages) < 4 else None
'''
ONLINE = ["--reward_funcs", "accuracy", "soft_overlong", "--max_completion_length", "16"]
VARIANTS = {  # name -> (rlhf_type, data, model, extra flags)
    "dpo": ("dpo", "pref", "text", []),
    "orpo": ("orpo", "pref", "text", []),
    "simpo": ("simpo", "pref", "text", []),
    "cpo": ("cpo", "pref", "text", []),
    "kto": ("kto", "kto", "text", []),
    "rm": ("rm", "pref", "text", []),
    "rm_vl": ("rm", "pref_vl", "vl", []),
    "ppo": ("ppo", "prompts", "text", ONLINE + ["--num_ppo_epochs", "2"]),
    "gkd": ("gkd", "chat", "text", ["--teacher_model", "{model}", "--lmbda", "0.5", "--max_completion_length", "16"]),
    "grpo": ("grpo", "prompts", "text", ONLINE),
    "grpo_dapo": ("grpo", "prompts", "text", ONLINE + ["--loss_type", "dapo", "--dynamic_sample", "true",
                                                       "--epsilon_high", "0.28", "--overlong_filter", "true"]),
    "grpo_multi_turn": ("grpo", "prompts", "text", ONLINE + ["--external_plugins", "{plugin}",
                                                             "--multi_turn_scheduler", "try_again"]),
}


def _data(folder: Path) -> dict[str, str]:
    from PIL import Image

    user = [{"role": "user", "content": f"Is the {w} fine?"} for w in WORDS]
    pref = [{"messages": [u, {"role": "assistant", "content": "yes"}], "rejected_response": "no the dog"} for u in user]
    Image.new("RGB", (56, 56), (220, 30, 30)).save(folder / "red.png")
    pref_vl = [{"messages": [{"role": "user", "content": "<image>Which colour?"},
                             {"role": "assistant", "content": "red"}], "rejected_response": w, "images": ["red.png"]}
               for w in WORDS[1:]]
    rows = {"pref": pref, "pref_vl": pref_vl, "kto": [{"messages": r["messages"], "label": i % 2 == 0}
                                                      for i, r in enumerate(pref)],
            "chat": [{"messages": r["messages"]} for r in pref],
            "prompts": [{"messages": [{"role": "user", "content": f"What colour is the {w}?"}], "solution": "red"}
                        for w in WORDS]}
    out = {}
    for name, items in rows.items():
        out[name] = str(folder / f"{name}.jsonl")
        Path(out[name]).write_text("\n".join(json.dumps(r) for r in items) + "\n")
    (folder / "plugin.py").write_text(PLUGIN)
    return out


def one(name: str, steps: int, folder: Path) -> dict:
    """Train one variant in this process; its seconds per step and peak memory."""
    import torch

    from tailorkit.cli import parse
    from tailorkit.train.rlhf import rlhf

    kind, data, model, extra = VARIANTS[name]
    model_dir = str(folder / model)
    extra = [x.format(model=model_dir, plugin=folder / "plugin.py") for x in extra]
    out = tempfile.mkdtemp(prefix=f"tailorkit-bench-{name}-")
    cfg = parse("rlhf", ["--rlhf_type", kind, "--model", model_dir, "--dataset", _data(folder)[data],
                         "--torch_dtype", "float32", "--per_device_train_batch_size", "4", "--max_steps", str(steps),
                         "--save_strategy", "no", "--logging_steps", str(steps), "--output_dir", out, *extra])
    result = rlhf(cfg)
    runtime = next(r["train_runtime"] for r in result.log_history if "train_runtime" in r)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"name": name, "steps": steps, "s_per_step": runtime / steps, "peak_rss_mib": peak_rss_mib(),
            "peak_gpu_mib": gpu, "output_dir": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print_result(one(args.one, args.steps, Path(args.folder)))
        return
    from tailorkit.models.tiny import build_qwen2, build_qwen2_5_vl

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_qwen2(folder / "text")
        build_qwen2_5_vl(folder / "vl")
        rows = [run_child(__file__, ["--one", name, "--steps", str(args.steps), "--folder", tmp])
                for name in args.only]
    print(f"{'variant':<18}{'steps':>6}{'s/step':>10}{'peak RSS MiB':>14}{'peak GPU MiB':>14}")
    for r in rows:
        gpu = f"{r['peak_gpu_mib']:.0f}" if r["peak_gpu_mib"] is not None else "-"
        print(f"{r['name']:<18}{r['steps']:>6}{r['s_per_step']:>10.4f}{r['peak_rss_mib']:>14.0f}{gpu:>14}")


if __name__ == "__main__":
    main()
