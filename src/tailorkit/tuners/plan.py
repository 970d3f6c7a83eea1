"""The declared training plan: component -> frozen / full / adapter, learning rate.

``resolve_plan`` turns the ms-swift flags (``--freeze_vit`` ...) and the explicit form (``--vit full``) into
one ``Plan`` and rejects contradictions, from the config and the family alone (before any weights load).
``tuners/adapters.apply_tuner`` applies it to a loaded model and returns the plan next to the model; the
recipe hands both to our Trainer, which builds the per-group optimizer from it, prints and saves the
trainability manifest and checks it after the first optimizer step (see ``tuners/runtime.py``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from ..config.train import TunerArgs
from ..errors import ConfigError
from ..models.family import COMPONENTS, Family

_FLAG = {"vision": ("vit", "freeze_vit"), "aligner": ("aligner", "freeze_aligner"), "llm": ("llm", "freeze_llm")}
_DEFAULT_FROZEN = {"vision": True, "aligner": True, "llm": False}
ADAPTER_ARGS = ("lora_rank", "lora_alpha", "lora_dropout", "target_modules", "target_regex", "use_dora",
                "use_rslora", "lorap_lr_ratio", "init_weights", "modules_to_save")


@dataclass
class Plan:
    """What trains and how. ``modes`` maps every component to frozen / full / lisa / the adapter kind."""

    train_type: str
    adapter: str | None  # the peft kind used for components in adapter mode ("existing" for dummy)
    modes: dict[str, str]
    lrs: dict[str, float | None]
    family: Family
    args: TunerArgs = field(repr=False)
    unused: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    full_modules: list[str] = field(default_factory=list)  # set by apply: fully trained modules next to an adapter

    def components(self, *modes: str) -> tuple[str, ...]:
        return tuple(c for c, m in self.modes.items() if m in modes)

    @property
    def adapter_components(self) -> tuple[str, ...]:
        return self.components(self.adapter) if self.adapter else ()


def adapter_kind(args: TunerArgs) -> str:
    """The adapter a component in adapter mode gets: a peft kind, or 'existing' for dummy."""
    if args.train_type == "dummy":
        return "existing"
    if args.train_type in ("full", "lisa", "lora", "qlora"):
        return "dora" if args.use_dora else "lora"
    return args.train_type


def resolve_plan(args: TunerArgs, family: Family) -> Plan:
    """Resolve flags into a Plan; contradictions raise ConfigError naming the winning flag."""
    kind = adapter_kind(args)
    trained_as = "full" if args.train_type in ("full", "lisa") else kind
    modes = {c: _component_mode(c, args, family, trained_as, kind) for c in ("vision", "aligner", "llm")}
    if args.train_type == "lisa" and modes["llm"] == "full":
        modes["llm"] = "lisa"
    modes["lm_head"] = modes["other"] = "full" if modes["llm"] in ("full", "lisa") else "frozen"
    if all(m == "frozen" for m in modes.values()) and not args.trainable_parameters:
        raise ConfigError("every component is frozen (vision, aligner and llm); nothing would train. Unfreeze one "
                          "with --freeze_llm false, --llm lora|full or --trainable_parameters")
    lrs = {c: None for c in COMPONENTS}
    lrs["vision"], lrs["aligner"] = args.vit_lr, args.aligner_lr
    plan = Plan(train_type=args.train_type, adapter=kind if kind in modes.values() else None, modes=modes,
                lrs=lrs, family=family, args=args)
    _check_plan(plan)
    return plan


def _component_mode(comp: str, args: TunerArgs, family: Family, trained_as: str, kind: str) -> str:
    explicit_name, freeze_name = _FLAG[comp]
    explicit, freeze = getattr(args, explicit_name), getattr(args, freeze_name)
    if not getattr(family, comp):
        if explicit not in (None, "frozen") or freeze is False:
            given = f"--{explicit_name} {explicit}" if explicit else f"--{freeze_name} false"
            raise ConfigError(f"{given}: {family.name} has no {comp} component; remove the setting")
        return "frozen"
    if explicit is not None and freeze is not None and (explicit == "frozen") != freeze:
        raise ConfigError(f"--{explicit_name} {explicit} and --{freeze_name} {str(freeze).lower()} contradict each "
                          f"other; the explicit --{explicit_name} wins over --{freeze_name}, so drop --{freeze_name}")
    if _frozen(comp, args):
        return "frozen"
    return {"full": "full", "lora": kind}.get(explicit, trained_as)


def _frozen(comp: str, args: TunerArgs) -> bool:
    explicit, freeze = (getattr(args, name) for name in _FLAG[comp])
    return explicit == "frozen" or (explicit is None and (freeze if freeze is not None else _DEFAULT_FROZEN[comp]))


def trained_components(args: TunerArgs) -> tuple[str, ...]:
    """Components the flags leave unfrozen, whatever the family (lm_head and other follow the LLM)."""
    comps = tuple(c for c in ("vision", "aligner", "llm") if not _frozen(c, args))
    return comps + (("lm_head", "other") if "llm" in comps else ())


def _check_plan(plan: Plan) -> None:
    args, modes = plan.args, plan.modes
    if plan.train_type == "lisa" and modes["llm"] != "lisa":
        raise ConfigError("train_type lisa switches LLM layers on and off; it needs the LLM trained fully "
                          f"(--llm {args.llm} / --freeze_llm true contradicts it)")
    if plan.train_type == "dummy" and "full" in modes.values():
        raise ConfigError("train_type dummy trains the adapters the model already has; a fully trained component "
                          "next to them is not supported: use --vit/--aligner/--llm lora|frozen")
    if (args.quant_bits or plan.train_type == "qlora") and plan.adapter in (None, "existing"):
        raise ConfigError(f"quantized loading (--quant_bits / qlora) freezes the base weights; it needs a new "
                          f"adapter (qlora, lora, dora ...), not train_type {plan.train_type}")
    if plan.train_type == "qlora" and not args.quant_bits:
        args.quant_bits = 4
    for comp, lr_flag in (("vision", "vit_lr"), ("aligner", "aligner_lr")):
        if getattr(args, lr_flag) is not None and modes[comp] == "frozen":
            raise ConfigError(f"--{lr_flag} is set but the {comp} component is frozen; unfreeze it "
                              f"(--{_FLAG[comp][0]} full|lora) or drop --{lr_flag}")
    if args.lorap_lr_ratio is not None and plan.adapter not in ("lora", "dora"):
        raise ConfigError("--lorap_lr_ratio (LoRA+) scales the learning rate of lora_B; no component gets a new "
                          "LoRA adapter in this plan")
    if args.use_galore and not plan.components("full", "lisa"):
        raise ConfigError("--use_galore projects the gradients of fully trained matrices; no component is trained "
                          "fully (use --train_type full or --vit/--aligner/--llm full)")
    if args.target_regex and args.target_modules != ["all-linear"]:
        raise ConfigError("--target_regex and --target_modules both choose adapter targets; --target_regex wins, "
                          "so drop --target_modules")
    overlap = [p for p in args.freeze_parameters if p in args.trainable_parameters]
    if overlap:
        raise ConfigError(f"{overlap} is in both --freeze_parameters and --trainable_parameters; "
                          "--trainable_parameters is applied last and would win: keep it in one list")
    plan.unused.update(_unused_arguments(plan))


def _unused_arguments(plan: Plan) -> dict[str, object]:
    """Arguments this plan cannot apply that were changed from their defaults (all adapter ones for dummy)."""
    args, out = plan.args, {}
    defaults = TunerArgs.__dataclass_fields__
    unused = list(ADAPTER_ARGS) if plan.adapter in (None, "existing") else []
    if plan.train_type != "lisa":
        unused += ["lisa_activated_layers", "lisa_step_interval"]
    if not args.use_galore:
        unused += ["galore_rank", "galore_update_proj_gap", "galore_scale"]
    for key in unused:
        value, f = getattr(args, key), defaults[key]
        default = f.default_factory() if callable(f.default_factory) else f.default
        # dummy reports every adapter argument: it creates no adapter, so none of them can apply.
        if value != default or (plan.train_type == "dummy" and key in ADAPTER_ARGS):
            out[key] = value
    return out


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def warn(message: str) -> None:
    """A printed warning that also reaches ``warnings`` (tests can catch it)."""
    print(f"[tailorkit] warning: {message}")
    warnings.warn(message, UserWarning, stacklevel=2)
