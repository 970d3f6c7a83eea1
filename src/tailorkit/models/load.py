"""Load a model with its processor and family: the ModelBundle every stage works on."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config.train import ModelArgs
from ..data.tools import apply_agent_template
from ..errors import ConfigError, ModelError
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


def load_processor(path: str, trust_remote_code: bool = False, chat_template: str | None = None,
                   family: Family | None = None):
    """The model's own processor (or tokenizer); it must carry a chat template.

    ``chat_template`` is a family's template patch: it replaces the native template (and is saved with
    every checkpoint, since the processor is). A text model whose tokenizer_config.json names a processor
    class the folder does not ship (common in community fine-tunes of vision models) gets its tokenizer.
    A ``family`` whose model ships no processor builds one around what loads (``Family.wrap_processor``).
    """
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        processor = _tokenizer_of_text_model(path, trust_remote_code, e)
    if family is not None and family.wrap_processor is not None:
        processor = family.wrap_processor(processor)
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


def _tokenizer_of_text_model(path: str, trust_remote_code: bool, error: Exception):
    """The tokenizer, when AutoProcessor failed on a model whose config has no vision or audio part."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        config = None
    if config is None or config_is_multimodal(config):
        raise ModelError(f"cannot load a processor or tokenizer from {path}: {error}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a processor or tokenizer from {path}: {error}; nor its tokenizer: {e}") \
            from None
    print(f"[tailorkit] {path}: the processor named by tokenizer_config.json cannot load ({str(error)[:120]}); "
          "the config has no vision or audio part, so this text model uses its tokenizer")
    return tokenizer


# Config keys of a model's non-text parts (vision towers, audio encoders), whatever the family calls them.
_MEDIA_CONFIG_KEYS = ("vision_config", "audio_config", "visual", "vision_tower", "mm_vision_tower", "speech_config",
                      "image_size", "vision_lora", "speech_lora")


def config_is_multimodal(config, family: Family | None = None) -> bool:
    """Whether the model takes media: its registered family says so, else its config has a non-text part."""
    if family is not None and not family.name.startswith("inferred:"):
        return family.is_multimodal or family.media != ("image",)
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return any(values.get(key) for key in _MEDIA_CONFIG_KEYS)


def model_config(args: ModelArgs, path: str | None = None):
    """The model's config (no weights; read once per model and process: every check before loading reuses it).
    A model whose own code must run without --trust_remote_code, or a folder that is not a model, is a
    ModelError that says what to do."""
    path = path or args.model
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
        if "trust_remote_code" in str(e) and not trust_remote_code:
            raise ModelError(f"{path} is built by its own Python code (config.json's auto_map), which runs only "
                             "when you allow it: read that code, then add --trust_remote_code true (in YAML: "
                             "trust_remote_code: true)") from None
        raise ModelError(f"cannot load a model config from {path}: {e}") from None


def load_family_processor(path: str, args: ModelArgs) -> tuple[object, Family]:
    """The processor at ``path`` with the chat template that training used: the family's patch when the
    family (of ``args.model``, or of ``path`` when no model is named) has one; and that family."""
    config = model_config(args, args.model or path)
    family = resolve_family(config, args.model_type, args.trust_remote_code)
    return load_processor(path, args.trust_remote_code, chat_template_for(args, family), family), family


def chat_template_for(args: ModelArgs, family: Family | None) -> str | None:
    """The template to render with: --template (a family's patch or a plugin's template), else the family's
    patch (None: the model's own)."""
    from ..plugins import load_plugins
    from .registry import FAMILIES, family_by_name

    if args.template is None:
        return family.chat_template if family is not None else None
    patched = sorted(name for name, fam in FAMILIES.items() if fam.chat_template is not None)
    plugins = load_plugins(args.external_plugins, reserved_templates=frozenset(FAMILIES))
    if args.template in plugins.templates:
        return plugins.templates[args.template]
    try:
        chosen = family_by_name(args.template)
    except ModelError:
        chosen = None
    if chosen is None or chosen.chat_template is None:
        known = patched + sorted(plugins.templates)
        raise ConfigError(f"--template {args.template}: no such template; families with a template patch and "
                          f"plugin templates: {', '.join(known)} (leave --template unset for the model's own)")
    return chosen.chat_template


def check_identity(args: ModelArgs, config, family: Family | None) -> None:
    """--model_alias and --model_category (the tutorials' YAML ``model:`` and ``model_type:``) against the
    checkpoint's config, before any weight loads."""
    from .aliases import family_of_name

    path = args.model
    if args.model_category is not None:
        multimodal = config_is_multimodal(config, family)
        if multimodal != (args.model_category == "multimodal"):
            what = "a multimodal" if multimodal else "a text-only"
            raise ModelError(f"model_category {args.model_category} (model_type in the YAML), but {path} is {what} "
                             f"model ({config.model_type}); fix the category or the checkpoint path")
    if args.model_alias is None:
        return
    named = family_of_name(args.model_alias)
    actual = family.name if family is not None else None
    if named is not None and actual is not None and named != actual:
        raise ModelError(f"model {args.model_alias!r} is a {named} model, but {path} holds a {actual} model "
                         f"(config.json model_type {config.model_type!r}); fix pretrained_model_path or the name")
    known = f"family {named}" if named else "a name tailorkit does not know: recorded only"
    print(f"[tailorkit] model {args.model_alias} ({known}) from {path}")


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


def bundle_processor(args: ModelArgs):
    """The processor ``load_bundle`` gives the model (family template patch, media budget, agent template),
    loaded without the weights: data is encoded with it before any weights load."""
    config = model_config(args)
    family = detect_family(config, args.model_type)
    if family is not None and family.trust_remote_code and not args.trust_remote_code:
        raise ModelError(f"{args.model} is a {family.name} model, which exists only as remote code; pass "
                         "--trust_remote_code true after reading the model's code")
    check_identity(args, config, family)
    processor = load_processor(args.model, args.trust_remote_code, chat_template_for(args, family), family)
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
    kwargs = dict(dtype=resolve_dtype(args.torch_dtype), trust_remote_code=args.trust_remote_code,
                  **args.model_kwargs)
    if args.attn_impl:
        kwargs["attn_implementation"] = args.attn_impl
    kwargs.update(load_kwargs)
    try:
        model = auto.from_pretrained(args.model, **kwargs)
    except TypeError as e:  # typically a --model_kwargs key this model's __init__ does not take
        raise ModelError(f"{args.model}: from_pretrained refused its arguments ({e}); check --model_kwargs "
                         f"{sorted(args.model_kwargs)}") from None
    if family is None:
        family = infer_family(model, config, auto_name)
    if family.prepare_model is not None:
        family.prepare_model(model, processor)
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
