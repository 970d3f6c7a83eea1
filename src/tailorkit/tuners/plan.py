"""Decide and apply what trains: full fine-tuning or LoRA, per component (vision / aligner / llm)."""

from __future__ import annotations

import re

import torch

from ..config.args import TunerArgs
from ..errors import ConfigError
from ..models.load import ModelBundle


def trained_components(args: TunerArgs) -> tuple[str, ...]:
    """Components that are not frozen; lm_head follows the LLM."""
    comps = []
    if not args.freeze_vit:
        comps.append("vision")
    if not args.freeze_aligner:
        comps.append("aligner")
    if not args.freeze_llm:
        comps += ["llm", "lm_head", "other"]
    return tuple(comps)


def apply_tuner(bundle: ModelBundle, args: TunerArgs) -> torch.nn.Module:
    """Freeze/unfreeze (full) or wrap with a peft LoRA adapter (lora); returns the model to train."""
    model, family = bundle.model, bundle.family
    comps = trained_components(args)
    if not family.is_multimodal:
        comps = tuple(c for c in comps if c not in ("vision", "aligner"))
    if not comps:
        raise ConfigError("every component is frozen (freeze_vit, freeze_aligner and freeze_llm are all true); "
                          "nothing would train")
    if args.train_type == "full":
        for name, p in model.named_parameters():
            p.requires_grad_(family.component_of(name) in comps)
        return model
    return _apply_lora(bundle, args, comps)


def lora_targets(bundle: ModelBundle, args: TunerArgs, comps: tuple[str, ...]) -> list[str] | str:
    """Full module names for 'all-linear' within the trained components, else the user's names."""
    if args.target_modules != ["all-linear"]:
        return args.target_modules
    names = bundle.family.linear_leaf_names(bundle.model, tuple(c for c in comps if c not in ("lm_head", "other")))
    if not names:
        raise ConfigError(f"no linear layer found in the components {comps} to put LoRA on")
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def _apply_lora(bundle: ModelBundle, args: TunerArgs, comps: tuple[str, ...]) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    for p in bundle.model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=lora_targets(bundle, args, comps),
                        modules_to_save=args.modules_to_save or None)
    return get_peft_model(bundle.model, config)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
