"""Load a model with its processor and family: the ModelBundle every stage works on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config.args import ModelArgs
from ..errors import ModelError
from .family import Family
from .media_budget import apply_media_budget
from .registry import family_by_name, family_for_config


@dataclass
class ModelBundle:
    model: torch.nn.Module
    processor: object  # a transformers processor, or a tokenizer for text-only models
    family: Family

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def load_processor(path: str, trust_remote_code: bool = False):
    """The model's own processor (or tokenizer); it must carry a chat template."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a processor or tokenizer from {path}: {e}") from None
    tok = getattr(processor, "tokenizer", processor)
    if not (getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)):
        raise ModelError(f"{path} has no chat template; tailorkit renders conversations with the model's own "
                         "template (add chat_template.jinja to the model directory)")
    if tok.pad_token_id is None:
        raise ModelError(f"{path}: the tokenizer has no pad token; set pad_token in tokenizer_config.json")
    return processor


def detect_family(config, model_type: str | None) -> Family:
    """The registered family for ``config``, or one inferred from its structure (printed)."""
    if model_type:
        return family_by_name(model_type)
    fam = family_for_config(config)
    if fam is not None:
        return fam
    return infer_family(config)


def infer_family(config) -> Family:
    """A module map guessed from transformers' conventional attribute names, for unregistered models."""
    multimodal = hasattr(config, "vision_config")
    fam = Family(
        name=f"inferred:{config.model_type}",
        model_types=(config.model_type,),
        auto_class="AutoModelForImageTextToText" if multimodal else "AutoModelForCausalLM",
        vision=("model.vision_tower", "model.visual", "model.vision_model") if multimodal else (),
        aligner=("model.multi_modal_projector", "model.visual.merger", "model.connector") if multimodal else (),
        llm=("model.language_model",) if multimodal else ("model",),
    )
    print(f"[tailorkit] {config.model_type} has no family file; inferred module map: vision={fam.vision} "
          f"aligner={fam.aligner} llm={fam.llm}")
    return fam


def load_bundle(args: ModelArgs, **load_kwargs) -> ModelBundle:
    """Load model, processor and family for ``args.model`` (a hub id or a local directory).

    ``load_kwargs`` go to ``from_pretrained`` (e.g. a ``quantization_config``).
    """
    import transformers
    from transformers import AutoConfig

    path = args.model
    if path is None:
        raise ModelError("no model given")
    if Path(path).exists() and not (Path(path) / "config.json").is_file():
        raise ModelError(f"{path} has no config.json; point --model at a saved model directory")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a model config from {path}: {e}") from None
    family = detect_family(config, args.model_type)
    processor = load_processor(path, args.trust_remote_code)
    apply_media_budget(processor, args)
    auto = getattr(transformers, family.auto_class)
    kwargs = dict(dtype=resolve_dtype(args.torch_dtype), trust_remote_code=args.trust_remote_code)
    if args.attn_impl:
        kwargs["attn_implementation"] = args.attn_impl
    kwargs.update(load_kwargs)
    model = auto.from_pretrained(path, **kwargs)
    check_module_map(model, family)
    return ModelBundle(model=model, processor=processor, family=family)


def check_module_map(model: torch.nn.Module, family: Family) -> None:
    """Every declared component must own parameters; a stale map is an error, not a silent no-op."""
    owned = {c: 0 for c in ("vision", "aligner", "llm", "lm_head")}
    for name, _ in model.named_parameters():
        comp = family.component_of(name)
        if comp in owned:
            owned[comp] += 1
    for comp in ("vision", "aligner", "llm"):
        if getattr(family, comp) and owned[comp] == 0:
            raise ModelError(f"family {family.name}: no parameter matches the {comp} prefixes "
                             f"{getattr(family, comp)}; the module map does not fit this model")
