"""Turn YAML files, nested tutorial layouts and command-line values into typed configs.

Every key is applied or rejected with a message; nothing is silently ignored.
"""

from __future__ import annotations

import difflib
from dataclasses import fields
from pathlib import Path

import yaml

from ..errors import ConfigError
from .fields import base_type, concern_fields, to_bool
from .trainer_args import check_trainer_args, is_training_argument

# Parallelism that tailorkit's training does not do, with what to use instead; a size of 1 is what it does.
PARALLEL_SIZES = {
    "tensor_parallel_size": "tensor parallelism is not supported for training; shard a model that does not fit "
                            "one GPU with --deepspeed zero3 or --fsdp full_shard",
    "pipeline_parallel_size": "pipeline parallelism is not supported for training; shard a model that does not "
                              "fit one GPU with --deepspeed zero3 or --fsdp full_shard",
}
_NESTED_SECTIONS = ("training_args", "model_args", "data_args", "train_args", "tuner_args")
# TrainingArguments' mixed-precision flags: the run's dtype (float16 is refused on CPU by SftConfig).
_PRECISION_FLAGS = {"fp16": "float16", "bf16": "bfloat16"}


def suggest(name: str, known) -> str:
    """' (did you mean --x?)' for a close match, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean --{close[0]}?)" if close else ""


def aliases(cls) -> dict[str, str]:
    """alias -> canonical argument name."""
    return {a: name for name, (_, f, _t) in concern_fields(cls).items() for a in f.metadata.get("aliases", ())}


def read_yaml(path: str | Path) -> dict:
    """Load a YAML mapping of settings; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    return flatten_layout(data, source=str(path))


def flatten_layout(data: dict, source: str = "<config>") -> dict:
    """Translate the nested tutorial layout (training_args, dataset: {...}, parallel_config) to flat keys.

    ``model`` next to ``pretrained_model_path`` is the model's name (``model_alias``): the weights are at the path.
    """
    flat: dict = {}
    data = dict(data)
    if "pretrained_model_path" in data:
        path = data.pop("pretrained_model_path")
        if "model" in data:
            flat["model_alias"] = data.pop("model")
        flat["model"] = path
    for section in _NESTED_SECTIONS:
        if section in data:
            sub = data.pop(section)
            if not isinstance(sub, dict):
                raise ConfigError(f"{source}: {section} must be a mapping")
            flat.update(sub)
    if isinstance(data.get("dataset"), dict):
        flat.update(_dataset_section(data.pop("dataset"), source))
    if "parallel_config" in data:
        flat.update(_parallel_section(data.pop("parallel_config"), source))
    flat.update(data)
    return flat


def _dataset_section(section: dict, source: str) -> dict:
    section = dict(section)
    out = {}
    kind = section.pop("type", None)
    path = section.pop("path", None)
    if path is None:
        raise ConfigError(f"{source}: dataset needs a 'path'")
    paths = path if isinstance(path, list) else [path]
    if kind is not None:
        for p in paths:
            if not str(p).split("#")[0].endswith("." + str(kind)):
                raise ConfigError(f"{source}: dataset type {kind!r} does not match the file {p!r}")
    out["dataset"] = paths
    if "pack_length" in section:  # the nested layout's name: a length there means "pack to this length"
        out["packing_length"] = section.pop("pack_length")
        out["packing"] = True
    out.update(section)  # other keys are applied or rejected like any other key
    return out


def _parallel_section(section: dict, source: str) -> dict:
    out = {}
    for key, value in dict(section).items():
        if key in PARALLEL_SIZES:  # checked with the flat keys, so that a flag can override the file's value
            out[key] = value
        elif key == "zero_stage":
            if int(value) > 0:
                out["deepspeed"] = f"zero{int(value)}"
        else:
            raise ConfigError(f"{source}: parallel_config.{key} is not a known setting "
                              "(known: tensor_parallel_size, pipeline_parallel_size, zero_stage)")
    return out


def check_parallel_size(key: str, value, where: str) -> None:
    """A tensor/pipeline parallel size of 1 is what tailorkit does; more is refused with what to use instead."""
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if size > 1:
        raise ConfigError(f"{where}={size}: {PARALLEL_SIZES[key]}")


def build_config(cls, values: dict, source: str = "<arguments>", origins: dict[str, str] | None = None):
    """Build a composite config (e.g. SftConfig) from flat ``values``; unknown keys fail with a suggestion.

    ``origins`` names where a key came from (its YAML file) when that is not ``source``. ms-swift habits are
    translated here: ``fp16``/``bf16`` set the dtype, parallel sizes of 1 are accepted, and any other
    transformers ``TrainingArguments`` field goes to ``trainer_args`` (when the config has it).
    """
    known = concern_fields(cls)
    alias = aliases(cls)
    per_concern: dict[str, dict] = {f.name: {} for f in fields(cls)}
    passthrough: dict = {}
    for given, value in values.items():
        key = alias.get(given, given)
        where = (origins or {}).get(given, source)
        if key in PARALLEL_SIZES:
            check_parallel_size(key, value, f"{where}: {key}")
        elif key in _PRECISION_FLAGS and "torch_dtype" in known:
            if _flag(key, value, where):
                per_concern[known["torch_dtype"][0]]["torch_dtype"] = _PRECISION_FLAGS[key]
        elif key in known:
            concern, f, tp = known[key]
            per_concern[concern][key] = coerce(value, f, tp, where)
        elif "trainer_args" in known and is_training_argument(key):
            passthrough[key] = value
        else:
            raise ConfigError(f"{where}: unknown setting {key!r}{suggest(key, known)}")
    if passthrough:
        concern = known["trainer_args"][0]
        given = per_concern[concern].get("trainer_args") or {}
        per_concern[concern]["trainer_args"] = {**passthrough, **check_trainer_args(given)}
    sub = {f.name: f.default_factory(**per_concern[f.name]) for f in fields(cls)}
    return cls(**sub)


def _flag(key: str, value, source: str) -> bool:
    try:
        return to_bool(value)
    except ValueError:
        raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}") from None


def coerce(value, f, tp, source: str):
    """Convert a YAML/CLI value to the field's annotated type ``tp``."""
    kind = base_type(tp)
    name = f.name
    if value is None:
        return None
    try:
        if kind is list:
            if isinstance(value, str):
                value = [value]
            return [str(v) for v in value]
        if kind is dict:
            return value if isinstance(value, dict) else str(value)  # str is parsed as JSON by the dataclass
        if kind is bool:
            return to_bool(value)
        if kind in (int, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return kind(float(value)) if kind is int and isinstance(value, str) and "e" in value.lower() else kind(value)
        value = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name}: expected {kind.__name__}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{source}: {name}: {value!r} is not one of {', '.join(str(c) for c in choices if c)}")
    return value
