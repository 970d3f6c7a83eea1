"""Starting the processes: ``NPROC_PER_NODE=N tailorkit sft ...`` re-launches itself under torchrun (as ms-swift
does); under torchrun or ``accelerate launch`` every process joins one process group, and only rank 0 talks.

The launch variables are torchrun's own (``NPROC_PER_NODE``, ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), the standard ones of the ecosystem; tailorkit reads no other.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

from ..config.distributed import DistributedArgs
from ..errors import ConfigError

TRAINING_VERBS = ("sft", "pt", "rlhf")
# torchrun's flag for each launch variable; NNODES may be a range ("1:4") for elastic runs.
_TORCHRUN_FLAGS = (("NPROC_PER_NODE", "--nproc_per_node"), ("NNODES", "--nnodes"), ("NODE_RANK", "--node_rank"),
                   ("MASTER_ADDR", "--master_addr"), ("MASTER_PORT", "--master_port"))


def launched(environ=None) -> bool:
    """True inside a process started by torchrun, accelerate launch or another elastic launcher."""
    env = os.environ if environ is None else environ
    return "LOCAL_RANK" in env or "TORCHELASTIC_RUN_ID" in env


def torchrun_command(argv: list[str], environ: dict | None = None) -> list[str] | None:
    """The torchrun command that runs ``tailorkit argv`` on NPROC_PER_NODE processes, or None when there is
    nothing to launch (no NPROC_PER_NODE, not a training verb, or already inside a launched process)."""
    env = os.environ if environ is None else environ
    if not argv or argv[0] not in TRAINING_VERBS or "NPROC_PER_NODE" not in env or launched(env):
        return None
    flags = []
    for var, flag in _TORCHRUN_FLAGS:
        if env.get(var):
            flags += [flag, env[var]]
    nproc = env["NPROC_PER_NODE"]
    if not nproc.isdigit() or int(nproc) < 1:
        raise ConfigError(f"NPROC_PER_NODE={nproc!r}: give the number of processes per node (e.g. 8)")
    if int(env.get("NNODES", "1").split(":")[-1]) > 1 and not env.get("MASTER_ADDR"):
        raise ConfigError("NNODES > 1 needs MASTER_ADDR (the address of node 0) and NODE_RANK on every node")
    return [sys.executable, "-m", "torch.distributed.run", *flags, "-m", "tailorkit", *argv]


def planned_world_size() -> int:
    """Processes the run will have: WORLD_SIZE inside a launched process, NPROC_PER_NODE x NNODES before the
    launch, else one per visible GPU (at least 1)."""
    if os.environ.get("WORLD_SIZE", "").isdigit():
        return int(os.environ["WORLD_SIZE"])
    nproc = os.environ.get("NPROC_PER_NODE", "")
    if nproc.isdigit():
        return int(nproc) * int(os.environ.get("NNODES", "1").split(":")[-1] or 1)
    import torch

    return torch.cuda.device_count() or 1


def relaunch(argv: list[str]) -> None:
    """Replace this process with torchrun when NPROC_PER_NODE asks for it (returns when it does not)."""
    cmd = torchrun_command(argv)
    if cmd is None:
        return
    print(f"[tailorkit] launching: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)


def init_processes(dist: DistributedArgs):
    """Join the process group with --ddp_backend / --ddp_timeout (before anything else starts it with defaults)
    and silence every rank but 0; returns accelerate's PartialState."""
    from accelerate import PartialState

    from .deepspeed import forget_earlier_runs

    forget_earlier_runs()
    kwargs = {"timeout": timedelta(seconds=dist.ddp_timeout)}
    if launched():
        kwargs["backend"] = dist.ddp_backend or default_backend()
    state = PartialState(**kwargs)
    if not state.is_main_process:
        quiet()
    return state


def default_backend() -> str:
    """nccl between GPUs, gloo between CPU processes."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def quiet() -> None:
    """Rank > 0 prints nothing to stdout and shows no progress bars: rank 0 speaks for the run (errors and
    warnings still reach stderr)."""
    import datasets
    import transformers

    sys.stdout = open(os.devnull, "w")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def start_line(args, dist: DistributedArgs) -> str:
    """One line: world size, backend, engine, per-device and global batch (samples per optimizer step)."""
    import torch.distributed as torch_dist

    world = args.world_size
    backend = torch_dist.get_backend() if torch_dist.is_available() and torch_dist.is_initialized() else "none"
    nodes = max(1, world // int(os.environ.get("LOCAL_WORLD_SIZE", world) or world))  # torchrun sets it per node
    data_ranks = world // dist.sequence_parallel_size
    per_device = args.per_device_train_batch_size
    total = per_device * args.gradient_accumulation_steps * data_ranks
    engine = dist.engine if world > 1 else "single process"
    return (f"[tailorkit] world size {world} ({nodes} node{'s' if nodes > 1 else ''}), backend {backend}, engine "
            f"{engine}, batch {per_device} per device x {args.gradient_accumulation_steps} accumulation x "
            f"{data_ranks} data-parallel rank{'s' if data_ranks > 1 else ''} = {total} samples per optimizer step")
