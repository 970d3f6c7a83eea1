"""How a setting is declared: ``arg(default, help)`` on a dataclass field, and the flat view of a composite config.

A composite config (``SftConfig``, ``RlhfConfig``, ``InferConfig`` ...) is a dataclass of concern
dataclasses (``ModelArgs``, ``DataArgs`` ...). The CLI, YAML files and ``args.yaml`` see it flat: every
field of every concern under its own name (ms-swift's argument names), so names never repeat.
"""

from __future__ import annotations

import json
import typing
from dataclasses import field, fields

from ..errors import ConfigError


def arg(default, help: str, *, choices=None, aliases=()):
    """A dataclass field that is a command-line flag and YAML key.

    ``help`` is the flag's one-line help; ``choices`` the accepted values (checked when parsing);
    ``aliases`` other flag names accepted for it (e.g. ms-swift's older spellings). A list or dict
    default is copied for every instance.
    """
    meta = {"help": help, "choices": choices, "aliases": tuple(aliases)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def concern_fields(cls) -> dict[str, tuple[str, object, object]]:
    """Map of flat argument name -> (concern attribute, dataclass field, resolved type) of a composite config."""
    out = {}
    for concern in fields(cls):
        hints = typing.get_type_hints(concern.default_factory)
        for f in fields(concern.default_factory):
            if f.name in out:
                raise AssertionError(f"argument {f.name} is defined twice")
            out[f.name] = (concern.name, f, hints[f.name])
    return out


def to_bool(value) -> bool:
    """A YAML/CLI boolean (true/false, yes/no, 1/0, on/off); ValueError otherwise."""
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


def json_object(name: str, value) -> dict:
    """A dict setting given as a dict (YAML) or as JSON text (command line); anything else is a ConfigError."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, got {value!r}")
    return value
