"""Peak memory per device for a training configuration, estimated before anything is loaded.

Parameter counts are exact: the model is built on the ``meta`` device from its config (no weights read)
and the tuner plan is applied to that structure. Activations are an estimate per token and layer
(inputs of every linear layer, attention output and norms, kept for the backward pass; with gradient
checkpointing only each layer's input plus one layer's working set), plus the fp32 logits and their
gradient. Frozen parts run without keeping activations. AdamW keeps two states per trainable parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..config.distributed import DistributedArgs
from ..config.train import TrainArgs, TunerArgs
from ..models.family import Family
from ..tuners.plan import trained_components

GIB = 1024 ** 3


@dataclass
class MemoryEstimate:
    total_params: int
    trainable_params: int
    weights: int  # bytes
    gradients: int
    optimizer: int
    activations: int
    available: int | None  # bytes of one device (GPU memory, or RAM when training on CPU)
    device: str
    setting: str = "ddp"  # how the state is split between devices: one of SETTINGS
    world_size: int = 1
    offloaded: int = 0  # bytes moved to CPU memory (offload), not counted in total
    block: int = 0  # bytes of the largest decoder / vision block (gathered whole under ZeRO-3 / FSDP)
    single: MemoryEstimate | None = field(default=None, repr=False)  # everything on one device (setting ddp)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def fits(self) -> bool | None:
        return None if self.available is None else self.total <= 0.9 * self.available

    def table(self) -> str:
        rows = [("weights", self.weights), ("gradients", self.gradients), ("optimizer states", self.optimizer),
                ("activations", self.activations), ("total (estimate)", self.total)]
        lines = [f"  {name:<18} {human_bytes(size):>12}" for name, size in rows]
        lines.insert(0, f"  parameters: {self.total_params:,} total, {self.trainable_params:,} trainable")
        lines.insert(1, f"  layout: {self.setting} over {self.world_size} device{'s' if self.world_size > 1 else ''}"
                        + (f"; {human_bytes(self.offloaded)} offloaded to CPU memory" if self.offloaded else ""))
        if self.available is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"  {self.device}: {human_bytes(self.available)} -> {verdict} (90% usable)")
            lines.append("  " + self.advice())
        return "\n".join(lines)

    def advice(self) -> str:
        """The fastest setting that fits on these devices, or that nothing does."""
        best = recommend(self)
        if best is None:
            return (f"nothing fits {self.world_size} device(s), not even zero3_offload "
                    f"({human_bytes(shard(self.single or self, 'zero3_offload', self.world_size).total)}): add "
                    "devices, --gradient_checkpointing true, a smaller --max_length or batch, or train LoRA/QLoRA")
        flag = "no --deepspeed needed" if best.setting == "ddp" else f"--deepspeed {best.setting}"
        return f"recommended: {flag} ({human_bytes(best.total)} per device)"


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def meta_model(config, family: Family) -> torch.nn.Module:
    """The model's structure on the meta device: parameter shapes without memory or weights."""
    import transformers

    with torch.device("meta"):
        return getattr(transformers, family.auto_class).from_config(config)


def _components(family: Family, tuner: TunerArgs) -> tuple[str, ...]:
    comps = trained_components(tuner)
    return comps if family.is_multimodal else tuple(c for c in comps if c not in ("vision", "aligner"))


def trainable_count(model: torch.nn.Module, family: Family, tuner: TunerArgs) -> int:
    """Parameters the tuner plan trains: whole components (full) or LoRA A/B matrices on their linear layers."""
    comps = _components(family, tuner)
    if tuner.train_type == "full":
        return sum(p.numel() for n, p in model.named_parameters() if family.component_of(n) in comps)
    modules = dict(model.named_modules())
    lora = sum(tuner.lora_rank * (modules[n].in_features + modules[n].out_features)
               for n in lora_target_names(model, family, tuner))
    saved = sum(p.numel() for n, p in model.named_parameters()
                if any(n == m or n.startswith(m + ".") or f".{m}." in f".{n}" for m in tuner.modules_to_save))
    return lora + saved


def lora_target_names(model: torch.nn.Module, family: Family, tuner: TunerArgs) -> set[str]:
    """Names of the linear layers LoRA wraps under the tuner plan (as `tuners.plan.lora_targets` picks them)."""
    comps = _components(family, tuner)
    if tuner.target_modules == ["all-linear"]:
        return set(family.linear_leaf_names(model, tuple(c for c in comps if c not in ("lm_head", "other"))))
    pattern = re.compile(r"(^|\.)(" + "|".join(map(re.escape, tuner.target_modules)) + r")$")
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pattern.search(n)}


def lora_input_width(model: torch.nn.Module, family: Family, tuner: TunerArgs) -> int:
    """Sum of in_features over the LoRA-wrapped layers: per-token elements of the dropout copies."""
    modules = dict(model.named_modules())
    return sum(modules[n].in_features for n in lora_target_names(model, family, tuner))


def estimate_memory(config, family: Family, tuner: TunerArgs, train: TrainArgs, *, dtype: torch.dtype,
                    seq_len: int, media_tokens: int = 0, world_size: int = 1,
                    dist: DistributedArgs | None = None) -> MemoryEstimate:
    """Peak memory of one device for one training step at ``seq_len`` tokens per sample.

    ``dist`` (--deepspeed, --fsdp, --sequence_parallel_size) and ``world_size`` (processes) say how the
    weights, gradients, optimizer states and activations are split between devices or moved to CPU memory.
    """
    model = meta_model(config, family)
    total = sum(p.numel() for p in model.parameters())
    trainable = trainable_count(model, family, tuner)
    width = torch.finfo(dtype).bits // 8
    # peft keeps LoRA matrices in fp32 (autocast_adapter_dtype); 16-bit training without DeepSpeed holds the
    # trained weights in fp32 too (master weights, train/precision.py); DeepSpeed keeps them in the 16-bit dtype.
    masters = width < 4 and not (dist is not None and dist.deepspeed) and tuner.train_type != "lora"
    train_width = 4 if tuner.train_type == "lora" or masters else width
    weights = total * width + (trainable * 4 if tuner.train_type == "lora" else 0)
    weights += trainable * (4 - width) if masters else 0
    acts = _activations(config, model, family, tuner, train, width, seq_len, media_tokens)
    device, available = _device_memory()
    unsharded = MemoryEstimate(total_params=total, trainable_params=trainable,
                               weights=weights,
                               gradients=trainable * train_width, optimizer=2 * trainable * train_width,
                               activations=acts, available=available, device=device)
    sp = dist.sequence_parallel_size if dist is not None else 1
    unsharded.block = largest_block(model, width)
    unsharded.world_size = world_size
    return shard(unsharded, sharding_of(dist), world_size, sp)


# Engines from the fastest to the most frugal (DeepSpeed's own ranking of its stages and offloads).
SETTINGS = ("ddp", "zero1", "zero2", "zero2_offload", "zero3", "zero3_offload")


def sharding_of(dist: DistributedArgs | None) -> str:
    """The memory layout of --deepspeed / --fsdp: one of SETTINGS (FSDP full_shard is laid out as ZeRO-3)."""
    if dist is None:
        return "ddp"
    if dist.fsdp:
        offload = "_offload" if "offload" in dist.fsdp.split() or (dist.fsdp_config or {}).get("cpu_offload") else ""
        return ("zero3" if "full_shard" in dist.fsdp.split() else "zero2") + offload
    if dist.deepspeed in SETTINGS:
        return dist.deepspeed
    from ..distributed.deepspeed import offloads, zero_stage

    stage = zero_stage(dist)
    return "ddp" if stage == 0 else f"zero{stage}" + ("_offload" if offloads(dist)[0] else "")


def shard(est: MemoryEstimate, setting: str, world: int, sp: int = 1) -> MemoryEstimate:
    """``est`` (one process holding everything) as one device holds it under ``setting`` on ``world`` devices.

    ZeRO-1 splits the optimizer states, ZeRO-2 also the gradients, ZeRO-3 (and FSDP full_shard) also the
    weights, of which one block at a time is gathered whole. Offload moves optimizer states (and with
    zero3_offload the weights) to CPU memory. Sequence parallel splits each sequence's activations.
    """
    available = est.available  # the device this estimate is for (a caller may have set it)
    est = est.single or est
    block = est.block
    stage = 0 if setting == "ddp" else int(setting[4])
    weights, gradients, optimizer = est.weights, est.gradients, est.optimizer
    if stage >= 1:
        optimizer //= world
    if stage >= 2:
        gradients //= world
    if stage == 3:
        weights = weights // world + block
    offloaded = 0
    if setting.endswith("_offload"):
        offloaded, optimizer = optimizer * world, 0  # the host holds every local rank's share
        if stage == 3:
            offloaded, weights = offloaded + est.weights, block
    return MemoryEstimate(total_params=est.total_params, trainable_params=est.trainable_params, weights=weights,
                          gradients=gradients, optimizer=optimizer, activations=est.activations // sp,
                          available=available, device=est.device, setting=setting, world_size=world,
                          offloaded=offloaded, block=block, single=est)


def recommend(est: MemoryEstimate) -> MemoryEstimate | None:
    """The fastest of SETTINGS under which ``est``'s run fits one of its devices, or None when none does."""
    for setting in SETTINGS:
        candidate = shard(est, setting, est.world_size)
        if candidate.fits:
            return candidate
    return None


def largest_block(model: torch.nn.Module, width: int) -> int:
    """Bytes of the largest repeated block (decoder or vision layer): what ZeRO-3 gathers at once."""
    sizes = [sum(p.numel() for p in block.parameters()) for layers in model.modules()
             if isinstance(layers, torch.nn.ModuleList) for block in layers]
    return max(sizes, default=0) * width


def _activations(config, model: torch.nn.Module, family: Family, tuner: TunerArgs, train: TrainArgs, width: int, seq_len: int,
                 media_tokens: int) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    tokens = train.per_device_train_batch_size * seq_len
    acts = _stack_bytes(text, tokens, width, train.gradient_checkpointing)
    # logits, plus in fp32: the shifted copy the loss reads, the log-probabilities kept for backward, their gradient
    acts += tokens * text.vocab_size * (width + 3 * 4)
    if tuner.train_type == "lora" and tuner.lora_dropout > 0:
        acts += tokens * lora_input_width(model, family, tuner) * width  # peft's dropout copies each LoRA input
    vision = getattr(config, "vision_config", None)
    if vision is not None and "vision" in trained_components(tuner) and family.is_multimodal:
        patches = train.per_device_train_batch_size * media_tokens * 4  # 2x2 patches merged into one token
        acts += _stack_bytes(vision, patches, width, train.gradient_checkpointing)
    return acts


def _stack_bytes(cfg, tokens: int, width: int, checkpointing: bool) -> int:
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "embed_dim")
    inter = getattr(cfg, "intermediate_size", None) or 4 * hidden
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "depth")
    per_layer = tokens * (8 * hidden + 4 * inter) * width
    if checkpointing:
        return layers * tokens * hidden * width + per_layer
    return layers * per_layer


def _device_memory() -> tuple[str, int | None]:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"cuda:0 ({props.name})", props.total_memory
    try:
        import psutil
        return "cpu (system RAM)", psutil.virtual_memory().total
    except ImportError:
        return "cpu (system RAM)", None
