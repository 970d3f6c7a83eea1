"""Apply a Plan: peft adapters of every kind, adapters the model already ships (dummy), full components."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config.train import TunerArgs
from ..errors import ConfigError
from ..models.family import strip_peft_prefix
from ..models.load import ModelBundle
from .modality import shipped_adapter_dirs
from .plan import Plan, resolve_plan, warn


def _no_boft_cuda_build_without_a_gpu() -> None:
    """Keep peft from JIT-compiling BOFT's CUDA kernel (fbd_cuda) on a machine with no GPU to run it.

    peft tries the build whenever a BOFT layer is created, whatever the device: on a CPU machine with a CUDA
    toolchain it compiles for minutes into ~/.cache/torch_extensions, and a build killed midway leaves a lock
    there that makes every later BOFT run wait forever. Marking the kernel unavailable (peft's own module
    global, which its failed build also sets) makes peft use its pure-PyTorch path, as it would after a
    failed build.
    """
    import torch

    if not torch.cuda.is_available():
        import peft.tuners.boft.layer as boft_layer

        if boft_layer._FBD_CUDA is None:
            boft_layer._FBD_CUDA = False


def _init_weights(value: str):
    low = value.lower()
    return {"true": True, "false": False}.get(low, low)


def peft_config(plan: Plan, targets: str):
    """The peft config of ``plan.adapter`` on the modules matched by ``targets``."""
    import peft

    a = plan.args
    kind = plan.adapter
    lora_like = dict(r=a.lora_rank, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout, target_modules=targets,
                     modules_to_save=a.modules_to_save or None)
    if kind in ("lora", "dora"):
        return peft.LoraConfig(**lora_like, use_dora=kind == "dora", use_rslora=a.use_rslora,
                               init_lora_weights=_init_weights(a.init_weights))
    if kind == "adalora":
        # total_step is re-set to the run's real step count when training begins (runtime.AdaLoraCallback).
        return peft.AdaLoraConfig(**lora_like, init_r=a.lora_rank, target_r=max(1, a.lora_rank // 2),
                                  total_step=10**6)
    common = dict(target_modules=targets, modules_to_save=a.modules_to_save or None)
    if kind == "vera":
        return peft.VeraConfig(r=a.lora_rank, vera_dropout=a.lora_dropout, **common)
    if kind == "boft":
        _no_boft_cuda_build_without_a_gpu()
        return peft.BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=1, boft_dropout=a.lora_dropout, **common)
    if kind == "loha":
        return peft.LoHaConfig(r=a.lora_rank, alpha=a.lora_alpha, rank_dropout=a.lora_dropout, **common)
    if kind == "lokr":
        return peft.LoKrConfig(r=a.lora_rank, alpha=a.lora_alpha, rank_dropout=a.lora_dropout, **common)
    if kind == "ia3":
        return peft.IA3Config(feedforward_modules=[], **common)
    raise ConfigError(f"unknown adapter kind {kind!r}")


def load_shipped_adapters(model: torch.nn.Module, folders: list[str]) -> None:
    """Load peft adapter folders into the model, as a model that ships adapters (Phi-4-multimodal) carries them."""
    for folder in folders:
        path = Path(folder)
        if not (path / "adapter_config.json").is_file():
            raise ConfigError(f"--adapters {folder}: no adapter_config.json there; point at a peft adapter folder")
        model.load_adapter(str(path), adapter_name=path.name.replace(".", "_"))
    if len(folders) > 1:
        model.set_adapter([Path(f).name.replace(".", "_") for f in folders])


def tuner_layers(model: torch.nn.Module) -> dict[str, list[str]]:
    """Module name -> adapter names of every peft tuner layer already inside ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: list(m.active_adapters) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def adapter_param_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters that belong to adapters (not to a wrapped base layer)."""
    out = set()
    for layer in tuner_layers(model):
        prefix = layer + "." if layer else ""
        for name, _ in model.get_submodule(layer).named_parameters():
            if not name.startswith("base_layer."):
                out.add(prefix + name)
    return out


def apply_tuner(bundle: ModelBundle, args: TunerArgs) -> tuple[torch.nn.Module, Plan]:
    """Resolve the plan of ``args`` for the bundle's family and apply it; returns (model to train, plan)."""
    plan = resolve_plan(args, bundle.family)
    return apply_plan(bundle, plan), plan


def apply_plan(bundle: ModelBundle, plan: Plan) -> torch.nn.Module:
    """Freeze / wrap / unfreeze ``bundle.model`` as ``plan`` declares; returns the model to train."""
    model, family = bundle.model, bundle.family
    args = plan.args
    folders = args.adapters
    if not folders and plan.train_type == "dummy":  # the adapters the checkpoint ships (Phi-4-multimodal's)
        folders = shipped_adapter_dirs(getattr(model, "name_or_path", None))
    if folders:
        load_shipped_adapters(model, folders)
    existing = tuner_layers(model)
    if existing and plan.train_type != "dummy":
        names = sorted({a for v in existing.values() for a in v})
        warn(f"the model already carries peft adapters {names} on {len(existing)} layers; a new "
             f"{plan.adapter or plan.train_type} adapter on top conflicts with them. Use --train_type dummy to "
             "keep training the adapters it ships")
    if plan.train_type == "dummy" and not existing:
        raise ConfigError("train_type dummy trains the adapters the model already has, and this model has none "
                          "(no peft folder with adapter_config.json inside the model directory); load them with "
                          "--adapters DIR or choose --train_type lora")
    for p in model.parameters():
        p.requires_grad_(False)
    if args.quant_bits:
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if plan.adapter not in (None, "existing"):
        model = _wrap_new_adapter(model, plan)
    adapter_names = adapter_param_names(model)
    for name, p in model.named_parameters():
        mode = plan.modes[family.component_of(name)]
        if mode in ("full", "lisa") and name not in adapter_names:
            p.requires_grad_(_trainable_dtype(name, p))
        elif mode == "existing" and name in adapter_names:
            p.requires_grad_(True)
    _apply_prefix_lists(model, args)
    plan.full_modules = full_module_names(model, adapter_names)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the plan leaves no trainable parameter (check --target_modules / --freeze_parameters)")
    return model


def _trainable_dtype(name: str, p: torch.Tensor) -> bool:
    if not p.is_floating_point():
        raise ConfigError(f"{name} is stored as {p.dtype} (quantized) and cannot be trained fully; freeze its "
                          "component or load without --quant_bits")
    return True


def component_targets(model: torch.nn.Module, plan: Plan) -> str:
    """Regex of the full module names that get the new adapter, restricted to adapter-mode components."""
    args, family = plan.args, plan.family
    comps = plan.adapter_components
    if args.target_regex:
        return args.target_regex
    names = family.linear_leaf_names(model, comps)
    if args.target_modules != ["all-linear"]:
        wanted = args.target_modules
        names = [n for n, _ in model.named_modules() if family.component_of(n) in comps
                 and any(n == w or n.endswith("." + w) for w in wanted)]
    if not names:
        raise ConfigError(f"no module for the adapter in the components {comps} "
                          f"(target_modules={args.target_modules})")
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def _wrap_new_adapter(model: torch.nn.Module, plan: Plan) -> torch.nn.Module:
    from peft import get_peft_model

    config = peft_config(plan, component_targets(model, plan))
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise ConfigError(f"train_type {plan.train_type}: peft cannot put a {plan.adapter} adapter on the chosen "
                          f"modules: {e}") from None


def _apply_prefix_lists(model: torch.nn.Module, args) -> None:
    for attr, value in (("freeze_parameters", False), ("trainable_parameters", True)):
        prefixes = getattr(args, attr)
        hit = set()
        for name, p in model.named_parameters():
            plain = strip_peft_prefix(name)
            for prefix in prefixes:
                if plain.startswith(prefix):
                    p.requires_grad_(value and _trainable_dtype(name, p))
                    hit.add(prefix)
        missing = [p for p in prefixes if p not in hit]
        if missing:
            raise ConfigError(f"--{attr} {missing}: no parameter name starts with it; names look like "
                              f"{next(iter(strip_peft_prefix(n) for n, _ in model.named_parameters()))!r}")


def full_module_names(model: torch.nn.Module, adapter_names: set[str]) -> list[str]:
    """Owner modules (peft prefix stripped) of trainable parameters that are not adapter parameters."""
    owners = []
    for name, p in model.named_parameters():
        if p.requires_grad and name not in adapter_names and ".modules_to_save." not in name:
            owner = strip_peft_prefix(name).rsplit(".", 1)[0]
            if owner not in owners:
                owners.append(owner)
    return owners
