"""Resolve what to serve (--model, --adapters, --ckpt_dir) and build the chosen backend's engine."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from ..config.train import ModelArgs
from ..config.infer import EngineArgs
from ..errors import ConfigError
from ..run_files import CONFIG_FILE as RUN_CONFIG
from ..run_files import FINAL_DIR

_RUN_MODEL_KEYS = ("model", "model_type", "torch_dtype", "attn_impl", "trust_remote_code", "agent_template")


@dataclass
class ServeSpec:
    """Everything needed to build an engine: base model, named LoRA adapters, processor folder, run settings."""

    model: ModelArgs
    adapters: dict[str, str]  # name -> folder, in the order given
    processor_dir: str
    run_config: dict  # the training run's args.yaml ({} without --ckpt_dir)


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """'name=path' or 'path' (named after its folder) -> {name: path}; each folder must be a peft adapter."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = adapter_name(spec), spec
        if not name or not path:
            raise ConfigError(f"--adapters {spec!r}: expected 'path' or 'name=path'")
        if name in out:
            raise ConfigError(f"--adapters: the name {name!r} is given twice; name them with 'name=path'")
        if not (Path(path) / "adapter_config.json").is_file():
            raise ConfigError(f"--adapters {spec!r}: {path} has no adapter_config.json (not a LoRA checkpoint)")
        out[name] = path
    return out


def adapter_name(path: str) -> str:
    """'runs/cats/checkpoint-final' -> 'cats-checkpoint-final'; other folders keep their name."""
    p = Path(path).resolve()
    return f"{p.parent.name}-{p.name}" if p.name.startswith("checkpoint-") else p.name


def read_run_config(ckpt_dir: str) -> tuple[Path, dict]:
    """The checkpoint folder (an output folder means its checkpoint-final) and its run's args.yaml."""
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise ConfigError(f"--ckpt_dir {ckpt_dir} is not a folder")
    has_weights = any((ckpt / f).is_file() for f in ("adapter_config.json", "config.json"))
    if not has_weights and (ckpt / FINAL_DIR).is_dir():
        ckpt = ckpt / FINAL_DIR
    for folder in (ckpt, ckpt.parent):
        if (folder / RUN_CONFIG).is_file():
            try:
                data = yaml.safe_load((folder / RUN_CONFIG).read_text()) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{folder / RUN_CONFIG}: not valid YAML: {e}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{folder / RUN_CONFIG}: expected a mapping of settings")
            return ckpt, data
    raise ConfigError(f"--ckpt_dir {ckpt_dir}: no {RUN_CONFIG} in it or its parent; point it at a folder written "
                      "by `tailorkit sft`, or use --model (and --adapters) instead")


def resolve(model: ModelArgs, engine: EngineArgs) -> ServeSpec:
    """Base model, adapters and processor folder from --model/--adapters/--ckpt_dir (explicit flags win)."""
    adapters = parse_adapters(engine.adapters)
    if not engine.ckpt_dir:
        return ServeSpec(model, adapters, model.model, {})
    ckpt, run = read_run_config(engine.ckpt_dir)
    defaults = ModelArgs()
    merged = {k: getattr(model, k) if getattr(model, k) != getattr(defaults, k) else run.get(k, getattr(defaults, k))
              for k in _RUN_MODEL_KEYS}
    if (ckpt / "adapter_config.json").is_file():
        name = adapter_name(str(ckpt))
        adapters = {name: str(ckpt), **{k: v for k, v in adapters.items() if k != name}}
    else:
        merged["model"] = str(ckpt)  # a full fine-tune: the checkpoint is the model
    if not merged["model"]:
        raise ConfigError(f"{ckpt}: its {RUN_CONFIG} names no model; pass --model")
    has_processor = any((ckpt / f).is_file() for f in ("tokenizer_config.json", "processor_config.json"))
    return ServeSpec(replace(model, **merged), adapters, str(ckpt) if has_processor else merged["model"], run)


def build_engine(model: ModelArgs, engine: EngineArgs):
    """(engine, spec) for the chosen backend; a backend that is not installed says how to install it."""
    spec = resolve(model, engine)
    if engine.infer_backend not in BACKENDS:
        raise ConfigError(f"infer_backend {engine.infer_backend!r} is not available in this version; use "
                          f"{' or '.join(BACKENDS)}")
    return BACKENDS[engine.infer_backend](spec, engine), spec


def _transformers(spec: ServeSpec, engine: EngineArgs):
    from ..models.load import load_bundle, load_processor
    from .engine import TransformersEngine

    bundle = load_bundle(spec.model)
    model = bundle.model
    if spec.adapters:
        from peft import PeftModel

        items = list(spec.adapters.items())
        model = PeftModel.from_pretrained(model, items[0][1], adapter_name=items[0][0])
        for name, path in items[1:]:
            model.load_adapter(path, adapter_name=name)
    processor = bundle.processor if spec.processor_dir == spec.model.model else load_processor(
        spec.processor_dir, spec.model.trust_remote_code)
    return TransformersEngine(model.eval(), processor, max_batch_size=engine.max_batch_size)


def _need_package(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        raise ConfigError(f"--infer_backend {name} needs the {name} package (and a CUDA GPU): pip install {name}")


def _vllm(spec: ServeSpec, engine: EngineArgs):
    _need_package("vllm")
    from .vllm_engine import VllmEngine

    return VllmEngine.load(spec, engine)


def _sglang(spec: ServeSpec, engine: EngineArgs):
    _need_package("sglang")
    from .sglang_engine import SglangEngine

    return SglangEngine.load(spec, engine)


def _lmdeploy(spec: ServeSpec, engine: EngineArgs):
    _need_package("lmdeploy")
    from .lmdeploy_engine import LmdeployEngine

    return LmdeployEngine.load(spec, engine)


BACKENDS = {"transformers": _transformers, "vllm": _vllm, "sglang": _sglang, "lmdeploy": _lmdeploy}
