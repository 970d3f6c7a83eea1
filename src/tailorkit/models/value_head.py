"""A scalar value head on the last hidden state of any causal LM or VLM: reward models and PPO's critic.

The head is ``v_head``, a bias-free ``Linear(hidden_size, 1)`` attached to the model itself, so the model
keeps its class, its module map (the head is an "other" component), peft adapters and checkpoints:

- full training saves ``v_head.weight`` next to the model's own weights (plain transformers loads the LM and
  ignores the head; ``load_reward_model`` restores both);
- with an adapter the head is trained fully next to it and saved inside ``adapter_model.safetensors``
  (listed in ``modules_to_save``, so plain peft restores it onto a model that has a ``v_head``).

A sequence's reward is the head's value at its last attended token; PPO's values are the head at every
position. No sequence-classification class is needed, so vision-language models work like text ones.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import yaml

from ..config.train import ModelArgs
from ..errors import ModelError
from ..run_files import CONFIG_FILE, FINAL_DIR
from .load import ModelBundle, load_bundle

HEAD = "v_head"


def add_value_head(model: torch.nn.Module, hidden_size: int | None = None, seed: int = 0) -> torch.nn.Linear:
    """Attach a fresh ``v_head`` (small seeded normal init, as HF's classification heads) and return it.

    ``hidden_size``: the width of the hidden states it will read (default: the model's own).
    """
    width = hidden_size or text_hidden_size(model)
    param = next(model.parameters())
    head = torch.nn.Linear(width, 1, bias=False)
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0 / (width + 1) ** 0.5, generator=torch.Generator().manual_seed(seed))
    head.to(device=param.device, dtype=param.dtype)
    setattr(model, HEAD, head)
    return head


def text_hidden_size(model: torch.nn.Module) -> int:
    """The width of the language model's hidden states (a VLM's text config)."""
    return model.config.get_text_config().hidden_size


def value_head_of(model: torch.nn.Module) -> torch.nn.Module:
    """The ``v_head`` of a model, through DDP and peft wrappers."""
    inner = getattr(model, "module", model)  # DDP
    head = getattr(inner, HEAD, None)
    if head is None:
        raise ModelError("the model has no value head (v_head); load it with models.value_head.load_reward_model or "
                         "attach one with add_value_head")
    return head


def _base_forward_params(model: torch.nn.Module) -> set[str]:
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return set(inspect.signature(type(inner).forward).parameters)


def last_hidden(model: torch.nn.Module, inputs: dict, *, logits: bool = False):
    """(logits or None, final hidden states [B, T, H]) of one forward pass of the model.

    Without ``logits`` only the last position's logits are computed (``logits_to_keep=1``) where the model
    takes it: the LM head's [B, T, vocab] output is not needed for a score.
    """
    kwargs = dict(output_hidden_states=True, use_cache=False)
    if not logits and "logits_to_keep" in _base_forward_params(model):
        kwargs["logits_to_keep"] = 1
    out = model(**inputs, **kwargs)
    return (out.logits if logits else None), out.hidden_states[-1]


def token_values(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The head's value at every position [B, T], in float32."""
    return head(hidden.to(head.weight.dtype)).squeeze(-1).float()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row (right or left padding)."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(1).int().argmax(dim=1)


def sequence_scores(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """The reward of each sequence of a padded batch [B]: the value head at its last attended token."""
    _, hidden = last_hidden(model, inputs)
    values = token_values(value_head_of(model), hidden)
    index = last_token_index(inputs["attention_mask"])
    return values[torch.arange(values.shape[0], device=values.device), index]


def lm_head_prefixes(model: torch.nn.Module, lm_head: tuple[str, ...]) -> list[str]:
    """The LM head's parameter prefixes when it has parameters of its own (untied from the embeddings).

    A reward model never uses the LM head, so training it would leave parameters without gradients (an
    error under DDP); the reward kind freezes them.
    """
    names = [n for n, _ in model.named_parameters()]
    return [p for p in lm_head if any(n == p or n.startswith(p + ".") for n in names)]


# ---- loading a trained reward model back -------------------------------------------------------------------

def has_value_head(folder: str | Path) -> bool:
    """Whether a checkpoint or export folder holds trained value-head weights."""
    return head_weight(Path(folder)) is not None


def trained_head(path: str) -> torch.Tensor | None:
    """The value head of a reward model at ``path`` (a checkpoint or run folder); None for anything else."""
    if not Path(path).is_dir():
        return None
    return head_weight(checkpoint_folder(Path(path)))


def head_weight(folder: Path) -> torch.Tensor | None:
    """The trained ``v_head.weight`` [1, hidden] in a folder's safetensors files (full or adapter), or None."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.removeprefix("base_model.model.") == f"{HEAD}.weight":
                    return f.get_tensor(key)
    return None


def load_reward_model(path: str, *, torch_dtype: str = "float32", trust_remote_code: bool = False) -> ModelBundle:
    """A reward model saved by `rlhf --rlhf_type rm` (or an export of one): base + value head, ready to score.

    ``path`` is a full checkpoint (model weights with ``v_head.weight``), an adapter checkpoint (its base
    comes from the run's args.yaml or adapter_config.json; the adapter is merged) or a run folder (its
    checkpoint-final). The model is in eval mode with no gradients.
    """
    from transformers.utils import logging as hf_logging

    folder = checkpoint_folder(Path(path))
    adapter = (folder / "adapter_config.json").is_file()
    base = _adapter_base(folder) if adapter else str(folder)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the LM class reports v_head.weight as unexpected: it is loaded below
    try:
        bundle = load_bundle(ModelArgs(model=base, torch_dtype=torch_dtype, trust_remote_code=trust_remote_code))
    finally:
        hf_logging.set_verbosity(level)
    model = bundle.model
    add_value_head(model)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    head = head_weight(folder)
    if head is None:
        raise ModelError(f"{path}: no value head (v_head.weight) in its weights; a reward model is trained with "
                         "`tailorkit rlhf --rlhf_type rm`")
    value_head_of(model).weight.data.copy_(head.to(value_head_of(model).weight.dtype))
    model.eval().requires_grad_(False)
    return ModelBundle(model=model, processor=bundle.processor, family=bundle.family)


def checkpoint_folder(path: Path) -> Path:
    """The folder holding a reward model's weights: ``path``, or the checkpoint-final of a run folder."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"reward model {path} is not a folder; give a checkpoint of `rlhf --rlhf_type rm`")
    if not any((path / f).is_file() for f in ("adapter_config.json", "config.json")) and (path / FINAL_DIR).is_dir():
        return path / FINAL_DIR
    return path


def _adapter_base(folder: Path) -> str:
    """The base model of an adapter checkpoint: the run's --model, else peft's record of it."""
    for run in (folder / CONFIG_FILE, folder.parent / CONFIG_FILE):
        if run.is_file():
            model = (yaml.safe_load(run.read_text()) or {}).get("model")
            if model:
                return model
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{folder}: an adapter without its base model's name (no {CONFIG_FILE}, no "
                         "base_model_name_or_path); load the base with --model and the adapter with --adapters")
    return base
