"""Load a model with its processor and family: the ModelBundle every stage works on."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config.train import ModelArgs
from ..data.tools import apply_agent_template
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


def load_processor(path: str, trust_remote_code: bool = False, chat_template: str | None = None):
    """The model's own processor (or tokenizer); it must carry a chat template.

    ``chat_template`` is a family's template patch: it replaces the native template (and is saved with
    every checkpoint, since the processor is).
    """
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a processor or tokenizer from {path}: {e}") from None
    tok = getattr(processor, "tokenizer", processor)
    if chat_template is not None:
        processor.chat_template = chat_template
        tok.chat_template = chat_template
    if not (getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)):
        raise ModelError(f"{path} has no chat template; tailorkit renders conversations with the model's own "
                         "template (add chat_template.jinja to the model directory)")
    if tok.pad_token_id is None:
        raise ModelError(f"{path}: the tokenizer has no pad token; set pad_token in tokenizer_config.json")
    return processor


def load_family_processor(path: str, args: ModelArgs) -> tuple[object, Family]:
    """The processor at ``path`` with the chat template that training used: the family's patch when the
    family (of ``args.model``, or of ``path`` when no model is named) has one; and that family."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.model or path, trust_remote_code=args.trust_remote_code)
    family = resolve_family(config, args.model_type, args.trust_remote_code)
    return load_processor(path, args.trust_remote_code, family.chat_template), family


def detect_family(config, model_type: str | None) -> Family | None:
    """The registered family for ``config`` (or ``model_type``); None when the map must be inferred."""
    if model_type:
        return family_by_name(model_type)
    return family_for_config(config)


def resolve_family(config, model_type: str | None, trust_remote_code: bool = False) -> Family:
    """The registered family, or one inferred from the model's structure built on the meta device
    (no weights read): for checks that run before, or instead of, loading the model."""
    family = detect_family(config, model_type)
    if family is not None:
        return family
    import transformers

    auto_name = auto_class_for(config)
    with torch.device("meta"):
        model = getattr(transformers, auto_name).from_config(config, trust_remote_code=trust_remote_code)
    return infer_family(model, config, auto_name)


def auto_class_for(config) -> str:
    """The transformers Auto class an unregistered model loads with."""
    from transformers import AutoModelForImageTextToText

    if type(config) in AutoModelForImageTextToText._model_mapping or hasattr(config, "vision_config"):
        return "AutoModelForImageTextToText"
    return "AutoModelForCausalLM"


# Conventional attribute names, most specific first; what matches is printed, never trusted silently.
VISION_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder", "vpm", "image_embed",
                "vision")
ALIGNER_NAMES = ("multi_modal_projector", "mm_projector", "connector", "merger", "resampler", "aligner",
                 "visual_projection", "attn_pool", "mlp1", "projector")


def infer_family(model: torch.nn.Module, config, auto_class: str) -> Family:
    """A module map read off a loaded model that has no family file, printed for the user to check.

    The LLM is the module that owns the input embeddings (minus any child holding the vision tower, as in
    Qwen-VL's ``transformer.visual``), lm_head the output embeddings; the vision tower and aligner are the
    shallowest modules with a conventional name.
    """
    names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters())]
    module_name = {id(m): n for n, m in model.named_modules()}
    embed = module_name.get(id(model.get_input_embeddings()), "")
    head_module = model.get_output_embeddings()
    lm_head = (module_name[id(head_module)],) if head_module is not None and id(head_module) in module_name else ()
    root = embed.rsplit(".", 1)[0] if "." in embed else "model"
    vision = _shallowest(names, VISION_NAMES, exclude=(embed,))
    aligner = _shallowest([n for n in names if vision and _under(n, vision[0])], ALIGNER_NAMES, exclude=()) or (
        _shallowest(names, ALIGNER_NAMES, exclude=(root,)) if vision else ())
    llm = (root,)
    if vision and _under(vision[0], root):
        children = {n for n in names if n.startswith(root + ".") and "." not in n[len(root) + 1:]}
        llm = tuple(sorted(c for c in children if not any(_under(n, c) for n in (*vision, *aligner))))
    fam = Family(name=f"inferred:{config.model_type}", model_types=(config.model_type,), auto_class=auto_class,
                 llm=llm, lm_head=lm_head, vision=vision, aligner=aligner, model_class=type(model).__name__,
                 support="inferred module map (no family file)")
    other = sorted({".".join(n.split(".")[:2]) for n, _ in model.named_parameters() if fam.component_of(n) == "other"})
    print(f"[tailorkit] {config.model_type} has no family file; inferred module map: vision={list(vision)} "
          f"aligner={list(aligner)} llm={list(llm)} lm_head={list(lm_head)} other={other} "
          "(pass --model_type to use a registered family instead)")
    return fam


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _shallowest(names: list[str], wanted: tuple[str, ...], exclude: tuple[str, ...]) -> tuple[str, ...]:
    for key in wanted:
        hits = [n for n in names if n.rsplit(".", 1)[-1] == key and not any(_under(n, e) for e in exclude)]
        if hits:
            return (min(hits, key=lambda n: n.count(".")),)
    return ()


def model_config(args: ModelArgs):
    """The model's transformers config (read once per model and process: every check before loading reuses it)."""
    path = args.model
    if path is None:
        raise ModelError("no model given")
    if Path(path).exists() and not (Path(path) / "config.json").is_file():
        raise ModelError(f"{path} has no config.json; point --model at a saved model directory")
    stamp = (Path(path) / "config.json").stat().st_mtime_ns if Path(path).is_dir() else None
    return _config(path, args.trust_remote_code, stamp)


@functools.lru_cache(maxsize=8)
def _config(path: str, trust_remote_code: bool, stamp: int | None):  # ``stamp``: a rewritten config reads anew
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a model config from {path}: {e}") from None


def bundle_processor(args: ModelArgs):
    """The processor ``load_bundle`` gives the model (family template patch, media budget, agent template),
    loaded without the weights: data is encoded with it before any weights load."""
    config = model_config(args)
    family = detect_family(config, args.model_type)
    if family is not None and family.trust_remote_code and not args.trust_remote_code:
        raise ModelError(f"{args.model} is a {family.name} model, which exists only as remote code; pass "
                         "--trust_remote_code true after reading the model's code")
    processor = load_processor(args.model, args.trust_remote_code, family.chat_template if family else None)
    apply_media_budget(processor, args)
    apply_agent_template(processor, args.agent_template)
    return processor


def load_bundle(args: ModelArgs, processor=None, **load_kwargs) -> ModelBundle:
    """Load model, processor and family for ``args.model`` (a hub id or a local directory).

    ``processor``: the one ``bundle_processor`` gave (loaded again when None). ``load_kwargs`` go to
    ``from_pretrained`` (e.g. a ``quantization_config``).
    """
    import transformers

    config = model_config(args)
    family = detect_family(config, args.model_type)
    processor = processor if processor is not None else bundle_processor(args)
    auto_name = family.auto_class if family is not None else auto_class_for(config)
    auto = getattr(transformers, auto_name)
    kwargs = dict(dtype=resolve_dtype(args.torch_dtype), trust_remote_code=args.trust_remote_code)
    if args.attn_impl:
        kwargs["attn_implementation"] = args.attn_impl
    kwargs.update(load_kwargs)
    model = auto.from_pretrained(args.model, **kwargs)
    if family is None:
        family = infer_family(model, config, auto_name)
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
