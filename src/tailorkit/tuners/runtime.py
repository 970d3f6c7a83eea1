"""What a Plan needs while training: the callbacks our Trainer installs and the extra files it saves."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..errors import ConfigError
from ..run_files import INITIAL_ADAPTER
from .manifest import TrainabilityCallback
from .plan import Plan


def plan_callbacks(model: torch.nn.Module, plan: Plan, seed: int) -> list[TrainerCallback]:
    """Callbacks in the order they must run: LISA picks layers before the check records what trains."""
    out: list[TrainerCallback] = []
    if plan.train_type == "lisa":
        out.append(LisaCallback(model, plan, seed))
    if plan.adapter == "adalora":
        out.append(AdaLoraCallback())
    if mutates_base(plan):
        out.append(InitialAdapterCallback())
    out.append(TrainabilityCallback(plan))
    return out


def adapter_penalty(model: torch.nn.Module, plan: Plan | None) -> torch.Tensor | None:
    """AdaLoRA's orthogonality regulariser, weighted by its ``orth_reg_weight``; None for other plans.

    peft adds it inside ``AdaLoraModel.forward`` only to a loss the model computes itself from ``labels``;
    our loss is computed outside the model, so the trainer adds this term (peft's formula: the mean over
    lora_A / lora_B matrices of ||P P^T - I||_F, P^T P for B).
    """
    if plan is None or plan.adapter != "adalora":
        return None
    adalora = model.base_model
    name = adalora.trainable_adapter_name
    terms = []
    for n, p in adalora.model.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and name in n:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype)))
    if not terms:
        return None
    return adalora.peft_config[name].orth_reg_weight * torch.stack(terms).mean()


def llm_layer_list(model: torch.nn.Module, plan: Plan) -> torch.nn.ModuleList:
    """The LLM's decoder layer list: the longest ModuleList inside the llm component."""
    best = None
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.ModuleList) and plan.family.component_of(name) == "llm":
            if best is None or len(m) > len(best):
                best = m
    if best is None:
        raise ConfigError(f"train_type lisa: no layer list found in the LLM of {plan.family.name}")
    return best


class LisaCallback(TrainerCallback):
    """LISA: every ``lisa_step_interval`` steps train ``lisa_activated_layers`` random LLM layers, freeze the rest.

    Embeddings, final norm and lm_head stay trained throughout (as in the LISA paper / LMFlow).
    """

    def __init__(self, model: torch.nn.Module, plan: Plan, seed: int):
        self.layers = llm_layer_list(model, plan)
        self.n = plan.args.lisa_activated_layers
        self.interval = plan.args.lisa_step_interval
        if not 0 < self.n <= len(self.layers) or self.interval < 1:
            raise ConfigError(f"lisa_activated_layers must be in 1..{len(self.layers)} (the LLM's layers) and "
                              f"lisa_step_interval >= 1; got {self.n} and {self.interval}")
        self.rng = random.Random(seed)
        self.active: list[int] = []
        plan.notes.append(f"lisa: {self.n} of {len(self.layers)} LLM layers trained at a time, re-drawn every "
                          f"{self.interval} steps; embeddings, norm and lm_head always trained")

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step % self.interval == 0:
            self.active = sorted(self.rng.sample(range(len(self.layers)), self.n))
            for i, layer in enumerate(self.layers):
                layer.requires_grad_(i in self.active)


class AdaLoraCallback(TrainerCallback):
    """AdaLoRA's rank budget: needs the run's step count and a call after every optimizer step."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        base = model.base_model
        config = base.peft_config[base.trainable_adapter_name]
        config.total_step = max(state.max_steps, config.tinit + config.tfinal + 1)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.base_model.update_and_allocate(state.global_step)


def mutates_base(plan: Plan) -> bool:
    """PiSSA / OLoRA / CorDA initialisation subtracts the adapter's start from the base weights."""
    init = plan.args.init_weights.lower()
    return plan.adapter in ("lora", "dora") and init.startswith(("pissa", "olora", "corda"))


class InitialAdapterCallback(TrainerCallback):
    """Saves the adapter as initialised (once per run), so that checkpoints convert to plain LoRA on the base."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        folder = Path(args.output_dir) / INITIAL_ADAPTER
        if state.is_world_process_zero and not (folder / "adapter_config.json").is_file():
            model.save_pretrained(str(folder))


def extra_parameters(model: torch.nn.Module, plan: Plan) -> list[torch.nn.Parameter]:
    """The parameters ``save_plan_extras`` reads from the model (fully trained modules next to an adapter, shipped
    adapters): what a sharded engine must gather before it runs."""
    from peft import PeftModel

    if (isinstance(model, PeftModel) and plan.full_modules) or plan.train_type == "dummy":
        return [p for p in model.parameters() if p.requires_grad]
    return []


def save_plan_extras(model: torch.nn.Module, plan: Plan, output_dir: str | Path,
                     state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Make a checkpoint hold everything the plan trained, in files plain peft loads.

    ``state_dict``: the model's weights gathered whole (FSDP2), read instead of its sharded parameters.

    Next to a new adapter, fully trained modules are written into ``adapter_model.safetensors`` under
    their own names and listed in ``modules_to_save``: ``PeftModel.from_pretrained`` restores them,
    while training kept a single copy in memory. Shipped adapters (dummy) go to ``<adapter name>/``.
    """
    out = Path(output_dir)
    from peft import PeftModel

    if isinstance(model, PeftModel) and mutates_base(plan) and not re.fullmatch(r"checkpoint-\d+", out.name):
        # The final adapter becomes plain LoRA (rank 2r) on the original base weights. Intermediate
        # checkpoints keep the PiSSA/OLoRA form: peft re-derives the base from it, and resuming needs it.
        initial = _initial_adapter_dir(out)
        model.save_pretrained(str(out), path_initial_model_for_weight_conversion=str(initial))
    if isinstance(model, PeftModel) and plan.full_modules:
        _add_full_modules(model, plan, out, state_dict)
    elif plan.train_type == "dummy":
        _save_shipped_adapters(model, out, state_dict)


def _initial_adapter_dir(out: Path) -> Path:
    for folder in (out, *out.parents[:2]):
        if (folder / INITIAL_ADAPTER / "adapter_config.json").is_file():
            return folder / INITIAL_ADAPTER
    raise ConfigError(f"{out}: the initial adapter ({INITIAL_ADAPTER}/) saved at the start of training is missing; "
                      "it is needed to convert a PiSSA/OLoRA adapter to plain LoRA")


def _add_full_modules(model, plan: Plan, out: Path, state_dict: dict | None) -> None:
    from safetensors.torch import load_file, save_file

    weights = out / "adapter_model.safetensors"
    config_file = out / "adapter_config.json"
    if not weights.is_file():
        raise ConfigError(f"{out}: expected adapter_model.safetensors from peft; cannot add the fully trained "
                          "modules to it")
    tensors = load_file(weights)
    owners = set(plan.full_modules)
    for name, p in model.named_parameters():
        if name.startswith("base_model.model.") and name[len("base_model.model."):].rsplit(".", 1)[0] in owners:
            tensors[name] = (state_dict[name] if state_dict is not None else p.detach()).to("cpu").contiguous()
    save_file(tensors, weights, metadata={"format": "pt"})
    config = json.loads(config_file.read_text())
    config["modules_to_save"] = sorted(set(config.get("modules_to_save") or []) | owners)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def _save_shipped_adapters(model, out: Path, state_dict: dict | None) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    for name, config in model.peft_config.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(folder))
        state = get_peft_model_state_dict(model, state_dict=state_dict, adapter_name=name)
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                  folder / "adapter_model.safetensors", metadata={"format": "pt"})
