"""Peak memory per device for a training configuration, estimated before anything is loaded.

Parameter counts are exact: the model is built on the ``meta`` device from its config (no weights read)
and the tuner plan is applied to that structure. Activations are an estimate per token and layer
(inputs of every linear layer, attention output and norms, kept for the backward pass; with gradient
checkpointing only each layer's input plus one layer's working set), plus the fp32 logits and their
gradient. Frozen parts run without keeping activations. AdamW keeps two states per trainable parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

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
        if self.available is not None:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"  {self.device}: {human_bytes(self.available)} -> {verdict} (90% usable)")
        return "\n".join(lines)


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
                    seq_len: int, media_tokens: int = 0, world_size: int = 1) -> MemoryEstimate:
    """Peak memory of one device for one training step at ``seq_len`` tokens per sample."""
    model = meta_model(config, family)
    total = sum(p.numel() for p in model.parameters())
    trainable = trainable_count(model, family, tuner)
    width = torch.finfo(dtype).bits // 8
    # peft keeps LoRA matrices in fp32 (autocast_adapter_dtype); 16-bit training without DeepSpeed holds the
    # trained weights in fp32 too (master weights, train/precision.py); DeepSpeed keeps them in the 16-bit dtype.
    masters = width < 4 and not train.deepspeed and tuner.train_type != "lora"
    train_width = 4 if tuner.train_type == "lora" or masters else width
    weights = total * width + (trainable * 4 if tuner.train_type == "lora" else 0)
    weights += trainable * (4 - width) if masters else 0
    gradients = trainable * train_width
    optimizer = 2 * trainable * train_width
    stage = {"zero2": 2, "zero3": 3}.get(train.deepspeed or "", 0)
    if stage >= 2:
        gradients, optimizer = gradients // world_size, optimizer // world_size
    if stage == 3:
        weights //= world_size
    acts = _activations(config, model, family, tuner, train, width, seq_len, media_tokens)
    device, available = _device_memory()
    return MemoryEstimate(total_params=total, trainable_params=trainable, weights=weights, gradients=gradients,
                          optimizer=optimizer, activations=acts, available=available, device=device)


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
