"""DeepSpeed ZeRO through the Hugging Face Trainer: presets by name, and what DeepSpeed needs to run on a CPU.

The Trainer builds the optimizer (our plan's parameter groups, torch AdamW) and hands it to DeepSpeed as a
client optimizer, so per-component learning rates and LoRA+ survive every ZeRO stage; no preset names a
DeepSpeed optimizer, whose CPU build (``cpu_adam``) would be a C++ compile on first use.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from ..config.distributed import DistributedArgs

_OFFLOAD = {"device": "cpu", "pin_memory": True}
_STAGES = {
    "zero0": {"stage": 0},
    "zero1": {"stage": 1},
    "zero2": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
    "zero3": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True,
              "stage3_gather_16bit_weights_on_model_save": True},
    "zero2_offload": {"stage": 2, "contiguous_gradients": True, "offload_optimizer": _OFFLOAD},
    "zero3_offload": {"stage": 3, "contiguous_gradients": True, "stage3_gather_16bit_weights_on_model_save": True,
                      "offload_optimizer": _OFFLOAD, "offload_param": _OFFLOAD},
}


def deepspeed_config(dist: DistributedArgs) -> dict | str | None:
    """--deepspeed as the Trainer takes it: a preset's config dict ("auto" values filled in from our settings by
    transformers), a user's JSON path unchanged, or None."""
    if dist.deepspeed is None:
        return None
    if not torch.cuda.is_available():
        _skip_shared_memory_build()
    if dist.deepspeed not in _STAGES:
        return dist.deepspeed
    return {"zero_optimization": dict(_STAGES[dist.deepspeed]), "bf16": {"enabled": "auto"},
            "fp16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "train_batch_size": "auto",
            # the client optimizer is torch's AdamW with our parameter groups: offload keeps it (DeepSpeed
            # would otherwise demand its compiled CPU Adam) and ZeRO accepts it
            "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False}


def zero_stage(dist: DistributedArgs) -> int:
    """The ZeRO stage of --deepspeed (a preset's, or the JSON file's), 0 without DeepSpeed."""
    if dist.deepspeed is None:
        return 0
    if dist.deepspeed in _STAGES:
        return _STAGES[dist.deepspeed]["stage"]
    config = json.loads(Path(dist.deepspeed).read_text())
    return int(config.get("zero_optimization", {}).get("stage", 0))


def offloads(dist: DistributedArgs) -> tuple[bool, bool]:
    """(optimizer states offloaded to CPU, parameters offloaded to CPU) under --deepspeed or --fsdp."""
    if dist.fsdp:
        words = dist.fsdp.split()
        on = "offload" in words or bool((dist.fsdp_config or {}).get("cpu_offload"))
        return on, on
    preset = _STAGES.get(dist.deepspeed or "", {})
    return "offload_optimizer" in preset, "offload_param" in preset


def _skip_shared_memory_build() -> None:
    """On CPU DeepSpeed compiles a shared-memory all-reduce (a C++ build of about a minute on first use, with a
    compiler that a machine may lack); gloo does the same reduction, deterministically. Marking the op
    incompatible before the process group starts makes DeepSpeed use torch.distributed's collectives."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def forget_earlier_runs() -> None:
    """Drop what an earlier DeepSpeed run in this process left behind (one Python session training twice): its
    config registered with transformers would make the next model load partitioned for ZeRO-3, and the flag
    accelerate sets in this process's environment would make the next run's state DeepSpeed's."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)


@contextmanager
def gathered(params: list[torch.nn.Parameter]):
    """Under ZeRO-3, ``params`` whole on every rank while the block runs (a collective every rank enters);
    elsewhere nothing happens."""
    sharded = [p for p in params if hasattr(p, "ds_id")]
    if not sharded:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(sharded, modifier_rank=None):
        yield
