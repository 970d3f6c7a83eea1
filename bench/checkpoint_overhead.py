"""Cost of crash safety: atomic checkpoint save vs the plain transformers save, and alarms per optimizer step.

    python bench/checkpoint_overhead.py                 # tiny random Qwen2 built in a temp folder
    python bench/checkpoint_overhead.py --model DIR     # any local model directory (--train_type full|lora)

Prints seconds per save (median of --repeats) for both, and the alarm callback's time per step next to
the time of a whole optimizer step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="local model directory (default: a tiny random Qwen2)")
    p.add_argument("--train_type", default="lora", choices=("lora", "full"))
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()

    from transformers import TrainerState

    from tailorkit.cli import parse
    from tailorkit.models.tiny import build_qwen2
    from tailorkit.train.sft import sft
    from tailorkit.train.alarms import AlarmCallback
    from tailorkit.train.checkpoint import CheckpointWriter

    tmp = Path(tempfile.mkdtemp(prefix="tk-bench-"))
    model = a.model or str(tmp / "tiny")
    if not a.model:
        build_qwen2(model)
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"what is {i} plus {i}?"},
                                                      {"role": "assistant", "content": str(2 * i)}]}) + "\n"
                            for i in range(32)))
    steps = 4
    result = sft(parse("sft", ["--model", model, "--dataset", str(data), "--output_dir", str(tmp / "out"),
                                      "--max_steps", str(steps), "--save_strategy", "no", "--logging_steps", "1",
                                      "--train_type", a.train_type, "--torch_dtype", "float32",
                                      "--max_length", "128"]))
    step_s = result.log_history[-1]["train_runtime"] / steps

    trainer = _trainer_of(data, tmp, a.train_type, model)
    plain, atomic = [], []
    for i in range(a.repeats):
        trainer.args.output_dir = str(tmp / f"plain{i}")
        trainer.hooks.checkpoints = None
        t = time.perf_counter()
        trainer._save_checkpoint(trainer.model, None)
        plain.append(time.perf_counter() - t)
        trainer.hooks.checkpoints = CheckpointWriter(tmp / f"atomic{i}", None, None)
        t = time.perf_counter()
        trainer._save_checkpoint(trainer.model, None)
        atomic.append(time.perf_counter() - t)

    cb = AlarmCallback()
    state = TrainerState(max_steps=100)  # mid-run: the finished run's state has a fully decayed learning rate
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for q in params:
        q.grad = q.detach().clone()
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    alarm = []
    for _ in range(max(a.repeats, 20)):
        t = time.perf_counter()
        cb.observe_batch(batch, batch["labels"].float().mean())
        cb.on_pre_optimizer_step(trainer.args, state, trainer.control, model=trainer.model,
                                 optimizer=trainer.optimizer)
        alarm.append(time.perf_counter() - t)

    print(f"model {model} ({a.train_type}, {result.trainable_params:,} trainable parameters)")
    print(f"save: plain transformers {statistics.median(plain):.4f} s, atomic (staging + fsync + rename + last) "
          f"{statistics.median(atomic):.4f} s, ratio {statistics.median(atomic) / statistics.median(plain):.2f}")
    print(f"alarms: {statistics.median(alarm) * 1e3:.3f} ms per optimizer step; whole step {step_s * 1e3:.1f} ms "
          f"({100 * statistics.median(alarm) / step_s:.2f}%)")


def _trainer_of(data, tmp, train_type, model):
    """A trainer of the recipe, trained one step (so it has an optimizer state), ready to save."""
    from tailorkit.cli import parse
    from tailorkit.train.recipe import prepare

    cfg = parse("sft", ["--model", model, "--dataset", str(data), "--output_dir", str(tmp / "b"), "--max_steps", "1",
                        "--save_strategy", "no", "--train_type", train_type, "--torch_dtype", "float32",
                        "--max_length", "128"])
    trainer = prepare(cfg, "sft").trainer
    trainer.train()
    return trainer


if __name__ == "__main__":
    main()
