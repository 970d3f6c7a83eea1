"""`tailorkit <verb>`: parse arguments (flags, YAML files, aliases) and call the verb's function."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .config.fields import concern_fields
from .config.loading import aliases, base_type, build_config, read_yaml, suggest
from .distributed.launch import relaunch
from .errors import TailorkitError


@dataclass(frozen=True)
class Verb:
    help: str
    config_cls: type
    run: Callable  # run(cfg) -> result


def _verbs() -> dict[str, Verb]:
    from .config import SftConfig
    from .config.eval import EvalConfig
    from .config.export import ExportConfig
    from .config.infer import DeployConfig, InferConfig
    from .demo.run import DemoConfig, demo
    from .doctor import DoctorConfig, doctor
    from .eval.runner import evaluate
    from .export.run import export
    from .infer.run import infer
    from .models.tiny_cli import TinyConfig, tiny
    from .serve.deploy import deploy
    from .config.rlhf import RlhfConfig
    from .config.ui import AppConfig, WebUiConfig
    from .ui.server import app, web_ui
    return {
        "sft": Verb("supervised fine-tuning on conversations (loss on assistant replies)", SftConfig, sft),
        "pt": Verb("continued pre-training on raw text (loss on every token)", SftConfig, pt),
        "rlhf": Verb("preference and reinforcement training: dpo, orpo, simpo, cpo, kto, rm (reward model), ppo, gkd "
                     "(distillation), grpo (and DAPO, RLOO, REINFORCE++, multi-turn)",
                     RlhfConfig, rlhf),
        "demo": Verb("build a tiny vision-language model and fine-tune it on a synthetic shapes task", DemoConfig,
                     demo),
        "doctor": Verb("check model, processor and data (every row, media file and encoded length) and estimate "
                       "memory; changes nothing", DoctorConfig, doctor),
        "infer": Verb("generate replies: interactive chat, or a dataset written to jsonl (--val_dataset)", InferConfig,
                      infer),
        "eval": Verb("score a model, adapter or checkpoint on local benchmarks (MME, TextVQA, VQAv2, multiple "
                     "choice) and your own data; report.json, predictions.jsonl, before/after tables", EvalConfig,
                     evaluate),
        "deploy": Verb("serve an OpenAI-compatible API (127.0.0.1 by default; --api_key guards every endpoint)",
                       DeployConfig, deploy),
        "export": Verb("merge adapters into the base and/or quantize (gptq, awq, bnb, fp8); the export is reloaded "
                       "and verified against the model in memory before it counts", ExportConfig, export),
        "web-ui": Verb("a browser page to train (sft, pt, rlhf), watch runs live, stop and resume them, chat, evaluate "
                       "and export; 127.0.0.1 unless --host (then --auth is required)", WebUiConfig, web_ui),
        "app": Verb("a chat page over one model and its checkpoint or adapters (images, streaming), for demos",
                    AppConfig, app),
        "tiny": Verb("write a tiny random model of a family (for tests and experiments)", TinyConfig, tiny),
    }


# The training stack (transformers' Trainer: ~10 s to import) loads only when a training verb runs, so the other
# verbs, the web UI among them, start in seconds.
def sft(cfg):
    from .train.sft import sft as run
    return run(cfg)


def pt(cfg):
    from .train.sft import pt as run
    return run(cfg)


def rlhf(cfg):
    from .train.rlhf import rlhf as run
    return run(cfg)


def build_parser(verb: str, spec: Verb) -> argparse.ArgumentParser:
    """A parser listing every argument of the verb's config with a one-line help."""
    p = argparse.ArgumentParser(prog=f"tailorkit {verb}", description=spec.help, allow_abbrev=False,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("config_file", nargs="?", help="YAML file of settings (flags given here override it)")
    p.add_argument("--config", dest="config_flag", help="YAML file of settings (same as the positional form)")
    alias_of = {}
    for alias, name in aliases(spec.config_cls).items():
        alias_of.setdefault(name, []).append(alias)
    for name, (concern, f, tp) in concern_fields(spec.config_cls).items():
        kind = base_type(tp)
        default = f.default_factory() if callable(f.default_factory) else f.default
        text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            text += f" [{'|'.join(str(c) for c in f.metadata['choices'] if c is not None)}]"
        text += f" (default: {default})"
        flags = [f"--{name}"] + [f"--{a}" for a in alias_of.get(name, [])]
        if kind is list:
            p.add_argument(*flags, dest=name, nargs="+", help=text)
        elif kind is bool:
            p.add_argument(*flags, dest=name, nargs="?", const="true", metavar="true|false", help=text)
        else:
            p.add_argument(*flags, dest=name, help=text)
    return p


def parse(verb: str, argv: list[str], spec: Verb | None = None):
    """Parse ``argv`` for ``verb`` into its typed config: YAML file first, then flags."""
    spec = spec or _verbs()[verb]
    parser = build_parser(verb, spec)
    ns, extra = parser.parse_known_args(argv)
    if extra:
        known = concern_fields(spec.config_cls)
        bad = next((x for x in extra if x.startswith("--")), extra[0])
        name = bad.lstrip("-").split("=")[0]
        raise TailorkitError(f"tailorkit {verb}: unknown argument {bad!r}{suggest(name, known)}")
    values = vars(ns)
    files = [values.pop("config_file", None), values.pop("config_flag", None)]
    merged: dict = {}
    for path in filter(None, files):
        merged.update(read_yaml(path))
    for key, value in values.items():
        merged.pop(key, None)
        for alias, canonical in aliases(spec.config_cls).items():
            if canonical == key:
                merged.pop(alias, None)
        merged[key] = value
    return build_config(spec.config_cls, merged)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbs = _verbs()
    top = argparse.ArgumentParser(prog="tailorkit", description="Fine-tune, evaluate and serve (multimodal) LLMs.")
    sub = top.add_subparsers(dest="verb", metavar="<verb>")
    for name, spec in verbs.items():
        sub.add_parser(name, help=spec.help, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in verbs:
        print(f"tailorkit: unknown verb {verb!r}{suggest(verb, verbs).replace('--', '')}; "
              f"verbs: {', '.join(verbs)}", file=sys.stderr)
        return 2
    try:
        cfg = parse(verb, rest, verbs[verb])
        relaunch(argv)  # NPROC_PER_NODE=N: the same command under torchrun (after the settings checked out)
        verbs[verb].run(cfg)
    except TailorkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0



if __name__ == "__main__":
    sys.exit(main())
