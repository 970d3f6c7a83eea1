"""Which engine shares the work between processes, as ``transformers.TrainingArguments`` fields.

DDP is the Trainer's default under torchrun; DeepSpeed and FSDP2 (on GPUs) go through accelerate with the
settings built here. FSDP2 on CPU is wrapped by distributed/fsdp.py (accelerate ignores FSDP there).
"""

from __future__ import annotations

import torch

from ..config.distributed import DistributedArgs
from ..config.train import TrainArgs
from ..errors import ConfigError
from .deepspeed import deepspeed_config

# What the tutorials' "Expected to mark a variable ready only once" error means here, and what to change
# (raised by DDP itself, or by the trainer's guard where DDP would let the processes drift apart silently).
READY_TWICE_HINT = (
    "DDP saw a parameter's gradient twice in one backward pass ('Expected to mark a variable ready only once'). "
    "Re-entrant gradient checkpointing ('use_reentrant': true) runs a separate backward per checkpointed forward, "
    "so a module used twice in a step (chosen and rejected in separate forward passes, a LoRA'd vision tower, tied "
    "or shared layers) is marked ready twice unless DDP runs with a static graph, which "
    "--ddp_find_unused_parameters true rules out. Fix: keep the default --gradient_checkpointing_kwargs "
    "'{\"use_reentrant\": false}', or set --ddp_find_unused_parameters false (tailorkit then runs DDP with a "
    "static graph for re-entrant checkpointing), or run chosen and rejected in one forward pass "
    "(--concatenated_forward true, the default), or use --deepspeed zero2")


def engine_arguments(dist: DistributedArgs, train: TrainArgs) -> dict:
    """DDP flags, the DeepSpeed config and (on GPUs) FSDP2's settings for TrainingArguments."""
    args = dict(ddp_find_unused_parameters=bool(dist.ddp_find_unused_parameters),
                ddp_broadcast_buffers=bool(dist.ddp_broadcast_buffers), ddp_static_graph=static_graph(dist, train),
                ddp_backend=dist.ddp_backend, ddp_timeout=dist.ddp_timeout, ddp_bucket_cap_mb=dist.ddp_bucket_cap_mb,
                deepspeed=deepspeed_config(dist),
                # FSDP2 by hand (CPU) saves gathered weights; its sharded optimizer state is not checkpointed
                save_only_model=bool(dist.fsdp) and not torch.cuda.is_available())
    if dist.fsdp and torch.cuda.is_available():
        args.update(fsdp=True, fsdp_config=fsdp_settings(dist))
    return args


def reentrant_checkpointing(train: TrainArgs) -> bool:
    return train.gradient_checkpointing and bool(train.gradient_checkpointing_kwargs.get("use_reentrant", True))


def static_graph(dist: DistributedArgs, train: TrainArgs) -> bool:
    """DDP's static graph, where it is valid and needed: re-entrant checkpointing forced by the user.

    Non-re-entrant checkpointing (our default) needs nothing. A static graph promises the same parameters
    get gradients every step, which --ddp_find_unused_parameters true says is not so.
    """
    return reentrant_checkpointing(train) and not dist.ddp_find_unused_parameters


def fsdp_settings(dist: DistributedArgs) -> dict:
    """FSDP2 settings: sharding from --fsdp, offload, blocks to wrap (default: the model's decoder and vision
    blocks, i.e. its ``_no_split_modules``), then whatever --fsdp_config says."""
    words = (dist.fsdp or "").split()
    settings = {"version": 2, "reshard_after_forward": "full_shard" in words,
                "cpu_offload": "offload" in words, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
    settings.update(dist.fsdp_config or {})
    if int(settings.get("version", 2)) != 2:
        raise ConfigError("fsdp_config version: tailorkit runs FSDP2 only (FSDP1 is deprecated); remove 'version'")
    return settings


def explain_collective_error(error: BaseException) -> str | None:
    """What to change for a distributed error a user can cause with settings; None for any other error."""
    text = str(error)
    if "mark a variable ready only once" in text or "marked as ready twice" in text:
        return READY_TWICE_HINT
    return None


def check_distributed(cfg, kind: str, world: int, resume) -> None:
    """Settings that need the number of processes (or the training kind), checked before any weights load."""
    d = cfg.dist
    if d.sequence_parallel_size > 1 and kind not in ("sft", "pt"):
        raise ConfigError(f"--sequence_parallel_size splits the sft/pt loss in this version, not {kind}'s; set it "
                          "to 1")
    if d.sequence_parallel_size > 1 and world % d.sequence_parallel_size:
        raise ConfigError(f"sequence_parallel_size {d.sequence_parallel_size} does not divide the {world} "
                          "processes; launch a multiple of it (NPROC_PER_NODE) or change it")
    if d.fsdp and world > 1 and not torch.cuda.is_available() and resume is not None \
            and not cfg.train.resume_only_model:
        raise ConfigError("--fsdp on CPU saves consolidated weights only (no sharded optimizer state), so it cannot "
                          "resume a run exactly; add --resume_only_model, or use --deepspeed zero3, which resumes")


def shards_weights(dist: DistributedArgs) -> bool:
    """True when the weights themselves are split between ranks (ZeRO-3, FSDP): a module's forward gathers them."""
    from .deepspeed import zero_stage

    return bool(dist.fsdp) or zero_stage(dist) == 3
