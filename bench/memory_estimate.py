"""Compare `tailorkit doctor`'s peak-memory estimate with the measured peak of one real training step.

Runs each configuration in a fresh subprocess on a random mid-size Qwen2 (built from a config: no download)
and prints estimate vs measurement. On CPU the measurement is the process's peak RSS growth from model
creation to the end of one forward/backward/AdamW step (allocator and framework overhead included); on a
CUDA GPU it is torch.cuda.max_memory_allocated.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/memory_estimate.py [--seq 256] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CONFIG = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
              num_key_value_heads=4, max_position_embeddings=4096, tie_word_embeddings=False)
CASES = [("lora", False), ("lora", True), ("full", False), ("full", True)]


def measure(train_type: str, checkpointing: bool, seq: int, batch: int) -> dict:
    import resource

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tailorkit.config.train import TrainArgs, TunerArgs
    from tailorkit.models.load import ModelBundle
    from tailorkit.models.text import QWEN2
    from tailorkit.train.losses import sft_loss
    from tailorkit.train.memory import estimate_memory
    from tailorkit.tuners.adapters import apply_tuner

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    config = Qwen2Config(**CONFIG)
    tuner, train = TunerArgs(train_type=train_type), TrainArgs(per_device_train_batch_size=batch,
                                                               gradient_checkpointing=checkpointing)
    est = estimate_memory(config, QWEN2, tuner, train, dtype=torch.float32, seq_len=seq)
    before = torch.cuda.memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(device)
    model, _ = apply_tuner(ModelBundle(model=model, processor=None, family=QWEN2), tuner)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, CONFIG["vocab_size"], (batch, seq), device=device)
    loss = sft_loss(model(input_ids=ids, use_cache=False).logits, ids)  # the loss sft trains with
    loss.backward()
    opt.step()
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"estimate": est.total, "measured": peak - before, "device": device}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one[0], a.one[1] == "true", a.seq, a.batch)))
        return
    print(f"random Qwen2 {CONFIG['num_hidden_layers']}x{CONFIG['hidden_size']}, vocab {CONFIG['vocab_size']}, fp32, "
          f"batch {a.batch} x {a.seq} tokens")
    print(f"{'train_type':<10} {'grad_ckpt':<9} {'estimate MiB':>12} {'measured MiB':>12} {'est/meas':>8}")
    for train_type, ckpt in CASES:
        cmd = [sys.executable, __file__, "--seq", str(a.seq), "--batch", str(a.batch), "--one", train_type,
               str(ckpt).lower()]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        mib = 1024 ** 2
        print(f"{train_type:<10} {str(ckpt):<9} {r['estimate'] / mib:>12.1f} {r['measured'] / mib:>12.1f} "
              f"{r['estimate'] / r['measured']:>8.2f}   ({r['device']})")


if __name__ == "__main__":
    main()
