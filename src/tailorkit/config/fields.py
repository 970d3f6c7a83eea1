"""How a setting is declared: ``arg(default, help)`` on a dataclass field, and the flat view of a composite config.

A composite config (``SftConfig``, ``RlhfConfig``, ``InferConfig`` ...) is a dataclass of concern
dataclasses (``ModelArgs``, ``DataArgs`` ...). The CLI, YAML files and ``args.yaml`` see it flat: every
field of every concern under its own name (ms-swift's argument names), so names never repeat.
"""

from __future__ import annotations

import typing
from dataclasses import field, fields


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
