"""What an export starts from: the base model in its training dtype (never quantized), the adapters on it, the
processor with the chat template training used, and the kind of head (causal LM or reward model)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..config.train import ModelArgs
from ..config.export import ExportConfig
from ..config.infer import EngineArgs
from ..errors import ConfigError, ModelError
from ..infer.load import ServeSpec, resolve
from ..models.family import Family
from ..models.load import ModelBundle, load_bundle
from ..models.value_head import add_value_head, trained_head


@dataclass
class Source:
    """The model in memory (a PeftModel when adapters are attached) and how to reload an export of it."""

    model: torch.nn.Module
    processor: object
    family: Family
    spec: ServeSpec
    auto_class: str  # the transformers Auto class that loads the export
    notes: list[str] = field(default_factory=list)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def resolve_source(cfg: ExportConfig) -> ServeSpec:
    """Base model, adapters and processor folder from --model/--adapters/--ckpt_dir (as `infer` reads them)."""
    spec = resolve(cfg.model, EngineArgs(adapters=cfg.source.adapters, ckpt_dir=cfg.source.ckpt_dir))
    return _processor_from_adapter(spec)


def _processor_from_adapter(spec: ServeSpec) -> ServeSpec:
    """A training checkpoint given as --adapters carries the processor it trained with (its added tokens
    included): that one is exported rather than the base model's."""
    if spec.processor_dir != spec.model.model:
        return spec
    for path in spec.adapters.values():
        if any((Path(path) / f).is_file() for f in ("tokenizer_config.json", "processor_config.json")):
            return replace(spec, processor_dir=path)
    return spec


def head_kind(run_config: dict) -> str:
    """'reward' for a reward-model run (`rlhf --rlhf_type rm`), else 'lm'.

    The one place that knows how a run's head is exported: a reward model is the causal LM / VLM with a value
    head ``v_head`` (models/value_head.py), trained fully next to the adapter (``modules_to_save``) or saved
    with the full weights; the export is the merged model's own files plus ``v_head.weight``.
    """
    return "reward" if run_config.get("rlhf_type") == "rm" else "lm"


def load_head_bundle(model_args: ModelArgs, kind: str) -> tuple[ModelBundle, str]:
    """The base model with the run's head, unquantized, and the Auto class that loads its export's LM (a reward
    model's head is reloaded with it by ``models.value_head.load_reward_model``)."""
    bundle = load_bundle(model_args)
    if kind == "reward":
        head = add_value_head(bundle.model)
        trained = trained_head(model_args.model or "")  # a full checkpoint holds its head; an adapter restores it
        if trained is not None:
            head.weight.data.copy_(trained.to(head.weight.dtype))
    return bundle, _auto_class_of(bundle)


def _auto_class_of(bundle: ModelBundle) -> str:
    from ..models.load import auto_class_for

    return bundle.family.auto_class or auto_class_for(bundle.model.config)


def load_source(spec: ServeSpec, processor) -> Source:
    """Load the base (in the run's dtype, unquantized even for QLoRA) and attach the adapters; ``processor`` is
    the one training saved (see ``load_family_processor``)."""
    _refuse_quantized_base(spec.model)
    notes = []
    if spec.run_config.get("train_type") == "qlora" or spec.run_config.get("quant_bits"):
        notes.append(f"QLoRA adapter: merged onto the unquantized base in {spec.model.torch_dtype} (never onto "
                     "its 4-bit weights)")
    bundle, auto_class = load_head_bundle(spec.model, head_kind(spec.run_config))
    model = bundle.model
    if spec.adapters:
        model = attach_adapters(model, spec.adapters, notes)
    return Source(model.eval(), processor, bundle.family, spec, auto_class, notes)


def _refuse_quantized_base(model_args: ModelArgs) -> None:
    config_file = Path(model_args.model or "") / "config.json"
    if config_file.is_file() and "quantization_config" in json.loads(config_file.read_text()):
        raise ModelError(f"{model_args.model} is a quantized model; merging an adapter into it would bake the "
                         "quantization error into the merged weights. Point --model at the unquantized base "
                         "(for QLoRA: the model the run loaded in 4-bit)")


def attach_adapters(model: torch.nn.Module, adapters: dict[str, str], notes: list[str]):
    """A PeftModel with every adapter loaded and active (the base's embeddings resized where an adapter
    carries a resized vocabulary)."""
    from peft import PeftModel

    for path in adapters.values():
        resize_for_adapter(model, path, notes)
    items = list(adapters.items())
    peft_model = PeftModel.from_pretrained(model, items[0][1], adapter_name=items[0][0])
    for name, path in items[1:]:
        peft_model.load_adapter(path, adapter_name=name)
    if len(items) > 1:
        peft_model.base_model.set_adapter([name for name, _ in items])
    for name, config in peft_model.peft_config.items():
        if config.is_prompt_learning:
            raise ConfigError(f"adapter {name!r} is {config.peft_type} (prompt learning), which has no weights to "
                              "merge into the base; export it as an adapter instead")
    return peft_model


def resize_for_adapter(model: torch.nn.Module, adapter_dir: str, notes: list[str]) -> None:
    """Resize the input/output embeddings to the vocabulary an adapter was saved with (tokens added in training)."""
    from safetensors import safe_open

    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        return
    embedding = model.get_input_embeddings().weight
    name = next(n for n, p in model.named_parameters() if p is embedding)
    with safe_open(str(weights), framework="pt") as f:
        rows = {f.get_slice(k).get_shape()[0] for k in f.keys() if _same_param(k, name)}
    if len(rows) == 1 and (n := rows.pop()) != embedding.shape[0]:
        notes.append(f"embeddings resized from {embedding.shape[0]} to {n} rows, as saved with {adapter_dir}")
        model.resize_token_embeddings(n, mean_resizing=False)


def _same_param(key: str, name: str) -> bool:
    key = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
    return key == name
