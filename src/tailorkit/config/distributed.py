"""Settings of multi-process training: DDP, DeepSpeed ZeRO, FSDP2 and sequence parallel (ms-swift's names).

How many processes run is torchrun's business (``NPROC_PER_NODE``, ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``, see distributed/launch.py); these fields say how those processes share the work.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .fields import arg

# --deepspeed presets (distributed/deepspeed.py builds each config); a YAML's parallel_config.zero_stage N is zeroN.
DEEPSPEED_PRESETS = ("zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")
FSDP_SHARDING = ("full_shard", "shard_grad_op")
FSDP_WORDS = (*FSDP_SHARDING, "offload", "auto_wrap")
DDP_BACKENDS = (None, "nccl", "gloo", "mpi", "xccl", "hccl", "cncl", "mccl")


@dataclass
class DistributedArgs:
    deepspeed: str | None = arg(None, "DeepSpeed ZeRO: a preset (zero0, zero1, zero2, zero3, zero2_offload, "
                                "zero3_offload) or a DeepSpeed JSON config file; runs on GPUs and on CPU")
    fsdp: str | None = arg(None, "FSDP2: full_shard (parameters, gradients and optimizer states sharded) or "
                           "shard_grad_op (gradients and optimizer states); add 'offload' to keep them in CPU "
                           "memory, e.g. 'full_shard offload'")
    fsdp_config: dict | None = arg(None, "FSDP options as JSON or a JSON file: cpu_offload, reshard_after_forward, "
                                   "transformer_layer_cls_to_wrap (default: the decoder and vision blocks)")
    ddp_find_unused_parameters: bool | None = arg(None, "DDP looks for parameters that got no gradient in a step "
                                                  "(slower; needed only when a step can skip trained modules; "
                                                  "default false)")
    ddp_broadcast_buffers: bool | None = arg(None, "DDP copies rank 0's buffers to every rank before each forward "
                                             "(default false)")
    ddp_backend: str | None = arg(None, "collective backend: nccl, gloo ... (default: nccl on GPUs, gloo on CPU)",
                                  choices=DDP_BACKENDS)
    ddp_timeout: int = arg(1800, "seconds a collective may wait for the other ranks before the run fails")
    ddp_bucket_cap_mb: int | None = arg(None, "size of DDP's gradient all-reduce buckets in MiB (default 25)")
    sequence_parallel_size: int = arg(1, "Ulysses sequence parallel: split each sequence across this many ranks "
                                      "(all-to-all over attention heads); must divide the number of processes")

    def __post_init__(self):
        if self.deepspeed is not None:
            check_deepspeed(self.deepspeed)
        if isinstance(self.fsdp_config, str):
            self.fsdp_config = read_json_setting("fsdp_config", self.fsdp_config)
        if self.fsdp is not None:
            check_fsdp(self.fsdp, self.deepspeed)
        elif self.fsdp_config:
            raise ConfigError("--fsdp_config is set but --fsdp is not; add --fsdp full_shard (or shard_grad_op)")
        if self.ddp_timeout <= 0:
            raise ConfigError(f"ddp_timeout must be a positive number of seconds, got {self.ddp_timeout}")
        if self.sequence_parallel_size < 1:
            raise ConfigError(f"sequence_parallel_size must be >= 1, got {self.sequence_parallel_size}")
        if self.sequence_parallel_size > 1 and (self.deepspeed or self.fsdp):
            raise ConfigError("--sequence_parallel_size runs on DDP in this version; drop --deepspeed / --fsdp, or "
                              "set --sequence_parallel_size 1")

    @property
    def engine(self) -> str:
        """The engine's name for the start line: ddp, deepspeed <preset>, fsdp <sharding>."""
        if self.deepspeed:
            return f"deepspeed {Path(self.deepspeed).name if self.deepspeed.endswith('.json') else self.deepspeed}"
        if self.fsdp:
            return f"fsdp2 {self.fsdp}"
        sp = self.sequence_parallel_size
        return "ddp" if sp == 1 else f"ddp + ulysses sequence parallel {sp}"


def check_deepspeed(value: str) -> None:
    """A preset name or an existing JSON file, and the deepspeed package installed."""
    if value not in DEEPSPEED_PRESETS:
        path = Path(value)
        if path.suffix != ".json" or not path.is_file():
            raise ConfigError(f"deepspeed={value!r} is neither a preset ({', '.join(DEEPSPEED_PRESETS)}) nor an "
                              "existing DeepSpeed .json config file")
        read_json_setting("deepspeed", value)
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"deepspeed={value!r} needs the deepspeed package: pip install -c constraints.txt "
                          "'tailorkit[dev]' (it pins deepspeed)")


def check_fsdp(value: str, deepspeed: str | None) -> None:
    words = value.split()
    unknown = [w for w in words if w not in FSDP_WORDS]
    sharding = [w for w in words if w in FSDP_SHARDING]
    if unknown or len(sharding) != 1:
        raise ConfigError(f"fsdp={value!r}: give one of {', '.join(FSDP_SHARDING)}, optionally with 'offload' "
                          f"and 'auto_wrap' (unknown: {', '.join(unknown) or 'none'})")
    if deepspeed is not None:
        raise ConfigError("--fsdp and --deepspeed are two engines for the same job; choose one")


def read_json_setting(name: str, value: str) -> dict:
    """A setting given as inline JSON or as a path to a JSON file."""
    text = Path(value).read_text() if value.endswith(".json") and Path(value).is_file() else value
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name}: {value!r} is neither valid JSON nor a JSON file: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a JSON object, got {type(data).__name__}")
    return data
