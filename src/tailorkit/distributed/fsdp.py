"""FSDP2 on CPU: ``torch.distributed.fsdp.fully_shard`` applied by hand, since accelerate ignores FSDP there.

On GPUs the Trainer runs FSDP2 through accelerate (distributed/engines.py: ``fsdp_settings``). On CPU
(gloo) every decoder and vision block, then the whole model, is sharded here before the Trainer builds
its optimizer; the parameters become DTensors sharded over the ranks. Checkpoints gather them into
one plain state dict on save (``full_state_dict``), so every checkpoint loads with transformers / peft.
"""

from __future__ import annotations

import torch

from ..config.distributed import DistributedArgs
from .engines import fsdp_settings


def fsdp_by_hand(dist: DistributedArgs, world_size: int) -> bool:
    """True when --fsdp must be applied here: several processes and no GPU."""
    return bool(dist.fsdp) and world_size > 1 and not torch.cuda.is_available()


def block_classes(model: torch.nn.Module, settings: dict) -> set[str]:
    """Class names wrapped as one FSDP unit each: --fsdp_config's list, else the model's decoder and vision
    blocks (``_no_split_modules``, the blocks transformers never splits across devices)."""
    names = settings.get("transformer_layer_cls_to_wrap")
    if names:
        return {names} if isinstance(names, str) else set(names)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(getattr(base, "_no_split_modules", None) or ())


def shard_on_cpu(model: torch.nn.Module, dist: DistributedArgs) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2: each block, then the root (which holds what no block holds)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    settings = fsdp_settings(dist)
    mesh = init_device_mesh("cpu", (torch.distributed.get_world_size(),))
    reshard = bool(settings.get("reshard_after_forward", True))
    classes = block_classes(model, settings)
    blocks = [m for m in model.modules() if type(m).__name__ in classes]
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    print(f"[tailorkit] fsdp2 on cpu: {len(blocks)} blocks ({', '.join(sorted(classes)) or 'none'}) and the root "
          f"sharded over {mesh.size()} ranks, reshard_after_forward={reshard}")
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer gathered whole: a collective every rank calls; rank 0 gets the dict (the others
    an empty one, so that N full copies never sit in host memory at once)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class ShardedModule(torch.nn.Module):
    """The sharded model as the Trainer's ``model_wrapped``: FSDP2 already reduces gradients, so accelerate
    must not wrap it in DDP (it refuses DTensor parameters); this thin holder keeps it from trying."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def is_sharded(model: torch.nn.Module) -> bool:
    """True when some parameter is a DTensor (the model went through ``fully_shard``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())
