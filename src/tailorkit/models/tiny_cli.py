"""`tailorkit tiny`: write a tiny random model of a registered family to a directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError


@dataclass
class _TinyArgs:
    model_type: str = field(default="qwen2_5_vl", metadata={"help": "family to build (see the support table)"})
    output_dir: str = field(default="tiny-model", metadata={"help": "directory to write the model into"})


@dataclass
class TinyConfig:
    args: _TinyArgs = field(default_factory=_TinyArgs)


def tiny(cfg: TinyConfig) -> Path:
    """Build the family's tiny model into ``output_dir`` (refuses to overwrite a non-empty directory)."""
    from .registry import family_by_name

    fam = family_by_name(cfg.args.model_type)
    if fam.build_tiny is None:
        raise ConfigError(f"family {fam.name} has no tiny build")
    out = Path(cfg.args.output_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose another --output_dir")
    fam.build_tiny(str(out))
    print(f"wrote a tiny random {fam.name} model to {out}")
    return out
