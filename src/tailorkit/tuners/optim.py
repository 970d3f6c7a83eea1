"""Optimizer parameter groups of a Plan: per-component learning rates, LoRA+, GaLore, weight decay."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .plan import Plan

GROUP_NAME = "tailorkit_group"


def _kind(name: str, module_is_linear: bool, plan: Plan) -> str:
    args = plan.args
    if args.lorap_lr_ratio is not None and (".lora_B." in name or ".lora_embedding_B." in name):
        return "lora_B"
    if args.use_galore and module_is_linear and plan.modes[plan.family.component_of(name)] in ("full", "lisa") \
            and plan.family.component_of(name) != "lm_head":
        return "galore"
    return ""


def param_groups(model: torch.nn.Module, plan: Plan, base_lr: float, weight_decay: float,
                 decay_names: set[str]) -> list[dict]:
    """Groups keyed by (component, kind, decay); each carries a readable name under ``GROUP_NAME``.

    LISA components are included whole: their layers switch requires_grad during training, and a
    parameter without a gradient is skipped by the optimizer.
    """
    linear_weights = {f"{m_name}.weight" if m_name else "weight" for m_name, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear)}
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        comp = plan.family.component_of(name)
        if not (p.requires_grad or plan.modes[comp] == "lisa"):
            continue
        kind = _kind(name, name in linear_weights and p.dim() == 2, plan)
        decay = name in decay_names
        lr = plan.lrs[comp] if plan.lrs[comp] is not None else base_lr
        if kind == "lora_B":
            lr *= plan.args.lorap_lr_ratio
        key = (comp, kind, decay)
        if key not in groups:
            label = "/".join(x for x in (comp, kind, "" if decay else "no_decay") if x)
            groups[key] = {"params": [], "lr": lr, "weight_decay": weight_decay if decay else 0.0, GROUP_NAME: label}
            if kind == "galore":
                a = plan.args
                groups[key].update(rank=a.galore_rank, update_proj_gap=a.galore_update_proj_gap,
                                   scale=a.galore_scale, proj_type="std")
        groups[key]["params"].append(p)
    # The Trainer logs the first group's learning rate: put the language model's groups first.
    order = {c: i for i, c in enumerate(("llm", "lm_head", "other", "aligner", "vision"))}
    return [groups[k] for k in sorted(groups, key=lambda k: (order[k[0]], k[1], not k[2]))]


def build_optimizer(model: torch.nn.Module, plan: Plan, training_args, decay_names: set[str]):
    """The optimizer TrainingArguments chooses (``optim``) over the plan's groups; GaLoreAdamW with --use_galore."""
    groups = param_groups(model, plan, training_args.learning_rate, training_args.weight_decay, decay_names)
    if plan.args.use_galore:
        try:
            from galore_torch import GaLoreAdamW
        except ImportError:
            raise ConfigError("--use_galore needs the galore-torch package (pip install galore-torch==1.0)") from None
        return GaLoreAdamW(groups, lr=training_args.learning_rate,
                           betas=(training_args.adam_beta1, training_args.adam_beta2), eps=training_args.adam_epsilon)
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    return cls(groups, **kwargs)
