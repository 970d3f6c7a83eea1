"""Run under torchrun by tests/train/test_rlhf_ddp.py: each rank writes what it saw to <out>/rank<r>.jsonl.

Scenarios, in one launch (one process group): KTO's KL estimate on this rank's half of a batch; DPO on the tiny
Qwen2.5-VL with LoRA and a frozen ViT under the settings of the tutorial's DDP trap (reentrant gradient
checkpointing, chosen and rejected in separate forward passes), with the aligner adapted (DDP raises) and
frozen (DDP stays silent: with our guard switched off the ranks' weights drift apart, with it the run stops);
then the same run with our defaults.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate import PartialState

from tailorkit.cli import main, parse
from tailorkit.errors import ConfigError
from tailorkit.train.preference import KtoAlgorithm
from tailorkit.train.recipe import fit, prepare

REENTRANT = ["--gradient_checkpointing_kwargs", '{"use_reentrant": true}', "--concatenated_forward", "false"]
FORCED = REENTRANT + ["--ddp_find_unused_parameters", "true"]  # rules out the static graph that makes it safe


def kto_batch():
    """Four KTO samples with fixed logits (the same on every rank); the KL samples' log-ratios differ."""
    g = torch.Generator().manual_seed(3)
    n, t, v = 4, 6, 11
    ids = torch.randint(v, (n, t), generator=g)
    labels = ids.clone()
    labels[:, :2] = -100
    logits, kl_logits = torch.randn(n, t, v, generator=g), torch.randn(n, t, v, generator=g) * 3
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "kl_input_ids": ids + 0,
            "kl_attention_mask": torch.ones_like(ids), "kl_labels": labels, "label": torch.tensor([1, 0, 1, 0]).bool(),
            "ref_logps": torch.full((n,), -20.0), "ref_kl_logps": torch.tensor([-30.0, -25.0, -12.0, -40.0])}, \
        logits, kl_logits


def kto_kl(rows: slice) -> float:
    batch, logits, kl_logits = kto_batch()
    batch = {k: v[rows] for k, v in batch.items()}
    by_id = {id(batch["input_ids"]): logits[rows], id(batch["kl_input_ids"]): kl_logits[rows]}

    class Model(torch.nn.Module):
        def forward(self, input_ids, **_):
            return SimpleNamespace(logits=by_id[id(input_ids)])

    algo = KtoAlgorithm(beta=0.1)
    algo.compute_loss(SimpleNamespace(current_gradient_accumulation_steps=1), Model(), batch)
    return algo.pop_metrics({"loss": 0.0})["kl"]


def dpo(argv: list[str], out: Path, guard: bool = True, static_graph: bool = True) -> dict:
    """One DPO run; what stopped it (if anything) and a checksum of this rank's LoRA weights.

    ``static_graph=False`` takes away the static graph tailorkit gives DDP under re-entrant checkpointing: what a
    plain Trainer run does, where DDP can stay silent while the processes drift apart.
    """
    run = prepare(parse("rlhf", argv + ["--output_dir", str(out)]), "dpo")
    if not static_graph:
        run.trainer.accelerator.ddp_handler.static_graph = False
    if not guard:  # switch the double-accumulation guard off: what DDP alone does
        run.trainer._ready_twice = SimpleNamespace(check=lambda: None)
    try:
        fit(run)
        error = cause = None
    except ConfigError as e:
        error, cause = str(e), str(e.__cause__ or "")
    lora = sum(float(p.double().sum()) * (i + 1) for i, (n, p) in enumerate(run.model.named_parameters())
               if "lora_" in n)
    return {"error": error, "cause": cause, "lora_checksum": lora}


def run_all(model: str, data: str, out: Path) -> None:
    PartialState()  # the process group (gloo on CPU), as a training run sets it up
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {"kto_kl": kto_kl(slice(2 * rank, 2 * rank + 2)), "kto_kl_world": world}
    common = ["--rlhf_type", "dpo", "--model", model, "--dataset", data, "--train_type", "lora", "--freeze_vit", "true",
              "--torch_dtype", "float32", "--gradient_checkpointing", "true", "--per_device_train_batch_size", "2",
              "--logging_steps", "1", "--save_strategy", "no", "--learning_rate", "1e-2"]
    results["aligner_lora_forced"] = dpo(common + ["--max_steps", "1", "--freeze_aligner", "false", *FORCED],
                                         out / "a")
    results["frozen_aligner_forced"] = dpo(common + ["--max_steps", "1", *FORCED], out / "c")
    results["frozen_aligner_plain_ddp_unguarded"] = dpo(common + ["--max_steps", "1", *REENTRANT], out / "b",
                                                        guard=False, static_graph=False)
    results["frozen_aligner_plain_ddp"] = dpo(common + ["--max_steps", "1", *REENTRANT], out / "f", static_graph=False)
    results["static_graph"] = dpo(common + ["--max_steps", "1", "--freeze_aligner", "false", *REENTRANT], out / "s")
    results["defaults"] = dpo(common + ["--max_steps", "2", "--freeze_aligner", "false"], out / "d")
    results["cli_defaults_exit"] = main(["rlhf", *common, "--max_steps", "2", "--output_dir", str(out / "e")])
    with open(out / f"rank{rank}.jsonl", "w") as f:
        f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    run_all(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
