"""Turn YAML files, nested tutorial layouts and command-line values into typed configs.

Every key is applied or rejected with a message; nothing is silently ignored.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import fields
from pathlib import Path

import yaml

from ..errors import ConfigError
from .fields import concern_fields

# Keys users copy from other tools that we cannot apply, with the reason and what to do instead.
REJECTED = {
    "tensor_parallel_size": "tensor parallelism is not supported for training; use --deepspeed zero3 to shard a "
                            "model that does not fit one GPU",
    "pipeline_parallel_size": "pipeline parallelism is not supported for training; use --deepspeed zero3",
}
_NESTED_SECTIONS = ("training_args", "model_args", "data_args", "train_args", "tuner_args")


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
    """Translate the nested tutorial layout (training_args, dataset: {...}, parallel_config) to flat keys."""
    flat: dict = {}
    data = dict(data)
    if "pretrained_model_path" in data:
        path = data.pop("pretrained_model_path")
        if "model" in data:
            flat["model_type"] = data.pop("model")
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
    for key in ("fp16", "bf16"):
        value = flat.pop(key, data.pop(key, None))
        if value:
            flat["torch_dtype"] = {"fp16": "float16", "bf16": "bfloat16"}[key]
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
        if key in ("tensor_parallel_size", "pipeline_parallel_size"):
            if int(value) > 1:
                raise ConfigError(f"{source}: parallel_config.{key}={value}: {REJECTED[key]}")
        elif key == "zero_stage":
            if int(value) > 0:
                out["deepspeed"] = f"zero{int(value)}"
        else:
            raise ConfigError(f"{source}: parallel_config.{key} is not a known setting "
                              "(known: tensor_parallel_size, pipeline_parallel_size, zero_stage)")
    return out


def build_config(cls, values: dict, source: str = "<arguments>"):
    """Build a composite config (e.g. SftConfig) from flat ``values``; unknown keys fail with a suggestion."""
    known = concern_fields(cls)
    alias = aliases(cls)
    per_concern: dict[str, dict] = {f.name: {} for f in fields(cls)}
    for key, value in values.items():
        key = alias.get(key, key)
        if key in REJECTED:
            raise ConfigError(f"{source}: {key}: {REJECTED[key]}")
        if key not in known:
            raise ConfigError(f"{source}: unknown setting {key!r}{suggest(key, known)}")
        concern, f, tp = known[key]
        per_concern[concern][key] = coerce(value, f, tp, source)
    sub = {f.name: f.default_factory(**per_concern[f.name]) for f in fields(cls)}
    return cls(**sub)


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


def to_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise ValueError(value)


def base_type(tp):
    """list, dict, bool, int, float or str for an annotation such as ``int | None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (list, dict):
        return origin
    if args:
        inner = args[0]
        return typing.get_origin(inner) or inner
    return tp
