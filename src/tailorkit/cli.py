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
from .startup import skip_unused_imports


@dataclass(frozen=True)
class Verb:
    help: str
    config: Callable[[], type]  # the verb's config class (imported only when the verb is used)
    run: Callable  # run(cfg) -> result; imports what the verb needs when it is called

    @property
    def config_cls(self) -> type:
        return self.config()


# Each verb imports its own stack when it runs, so `tailorkit --help` and the argument parsing import none of
# torch, transformers, peft, the server or plotting libraries.
def _lazy(module: str, name: str) -> Callable:
    """``tailorkit.<module>.<name>``, imported when first called (a config class: called with no arguments)."""
    def get(*args):
        import importlib

        target = getattr(importlib.import_module(f"tailorkit.{module}"), name)
        return target(*args) if args else target

    return get


def _training(module: str, name: str) -> Callable:
    """A training verb: its run leaves out the packages it does not use (startup.py) while it imports them."""
    def run(cfg):
        with skip_unused_imports(cfg):
            return _lazy(module, name)(cfg)

    return run


def _verbs() -> dict[str, Verb]:
    sft_config = _lazy("config.train", "SftConfig")
    return {
        "sft": Verb("supervised fine-tuning on conversations (loss on assistant replies)",
                    sft_config, _training("train.sft", "sft")),
        "pt": Verb("continued pre-training on raw text (loss on every token)",
                   sft_config, _training("train.sft", "pt")),
        "rlhf": Verb("preference and reinforcement training: dpo, orpo, simpo, cpo, kto, rm (reward model), ppo, gkd "
                     "(distillation), grpo (and DAPO, RLOO, REINFORCE++, multi-turn)",
                     _lazy("config.rlhf", "RlhfConfig"), _training("train.rlhf", "rlhf")),
        "demo": Verb("build a tiny vision-language model and fine-tune it on a synthetic shapes task",
                     _lazy("demo.run", "DemoConfig"), _lazy("demo.run", "demo")),
        "doctor": Verb("check model, processor and data (every row, media file and encoded length) and estimate "
                       "memory; changes nothing", _lazy("doctor", "DoctorConfig"), _lazy("doctor", "doctor")),
        "infer": Verb("generate replies: interactive chat, or a dataset written to jsonl (--val_dataset)",
                      _lazy("config.infer", "InferConfig"), _lazy("infer.run", "infer")),
        "eval": Verb("score a model, adapter or checkpoint on local benchmarks (MME, TextVQA, VQAv2, multiple "
                     "choice) and your own data; report.json, predictions.jsonl, before/after tables",
                     _lazy("config.eval", "EvalConfig"), _lazy("eval.runner", "evaluate")),
        "deploy": Verb("serve an OpenAI-compatible API (127.0.0.1 by default; --api_key guards every endpoint)",
                       _lazy("config.infer", "DeployConfig"), _lazy("serve.deploy", "deploy")),
        "export": Verb("merge adapters into the base and/or quantize (gptq, awq, bnb, fp8); the export is reloaded "
                       "and verified against the model in memory before it counts",
                       _lazy("config.export", "ExportConfig"), _lazy("export.run", "export")),
        "web-ui": Verb("a browser page to train (sft, pt, rlhf), watch runs live, stop and resume them, chat, evaluate "
                       "and export; 127.0.0.1 unless --host (then --auth is required)",
                       _lazy("config.ui", "WebUiConfig"), _lazy("ui.server", "web_ui")),
        "app": Verb("a chat page over one model and its checkpoint or adapters (images, streaming), for demos",
                    _lazy("config.ui", "AppConfig"), _lazy("ui.server", "app")),
        "tiny": Verb("write a tiny random model of a family (for tests and experiments)",
                     _lazy("models.tiny_cli", "TinyConfig"), _lazy("models.tiny_cli", "tiny")),
    }


def build_parser(verb: str, spec: Verb) -> argparse.ArgumentParser:
    """A parser listing every argument of the verb's config with a one-line help."""
    p = argparse.ArgumentParser(prog=f"tailorkit {verb}", description=spec.help, allow_abbrev=False,
                                argument_default=argparse.SUPPRESS, epilog=swift_spellings(spec.config_cls))
    p.add_argument("config_file", nargs="?", help="YAML file of settings (flags given here override it)")
    p.add_argument("-c", "--config", dest="config_flag", help="YAML file of settings (same as the positional "
                   "form; -c is ms-swift's spelling)")
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


def swift_spellings(config_cls) -> str:
    """The --help epilog: which ms-swift flags and values this verb accepts under another name."""
    known = concern_fields(config_cls)
    pairs = [f"--{alias} (= --{name})" for alias, name in sorted(aliases(config_cls).items())]
    if "attn_impl" in known:
        pairs.append("--attn_impl flash_attn (= flash_attention_2)")
    if "model_category" in known:
        pairs.append("--model_type multimodal|text (= --model_category)")
    if "torch_dtype" in known:
        pairs.append("--fp16/--bf16 true (= --torch_dtype float16/bfloat16)")
    if "trainer_args" in known:
        pairs += ["--tensor_parallel_size/--pipeline_parallel_size 1 (more is refused with what to use instead)",
                  "any other transformers TrainingArguments field, e.g. --adam_beta2 0.95 (= --trainer_args)",
                  "YAML: pretrained_model_path with model: NAME (= --model_alias), training_args:, "
                  "dataset: {type, path, pack_length}, parallel_config: {zero_stage: N} (= --deepspeed zeroN)"]
    if "deepspeed" in known:
        pairs.append("NPROC_PER_NODE=N before the command (relaunches under torchrun, N processes)")
    return "ms-swift spellings accepted: -c FILE (= --config), " + ", ".join(pairs)


def split_flags(argv: list[str], config_cls) -> tuple[list[str], dict[str, str]]:
    """(arguments for the parser, {name: value} of the flags it does not define).

    The parser's optional positional YAML file would otherwise swallow the value of an unknown flag.
    """
    known = {"-h", "--help", "-c", "--config"} | {f"--{n}" for n in concern_fields(config_cls)} | {
        f"--{a}" for a in aliases(config_cls)}
    rest, unknown, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if not arg.startswith("--") or flag in known:
            rest.append(arg)
        else:
            if not eq:
                has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
                value = argv[i + 1] if has_value else "true"
                i += has_value
            unknown[flag[2:]] = value
        i += 1
    return rest, unknown


def passthrough_flags(unknown: dict[str, str], config_cls, verb: str) -> dict:
    """The flags the parser does not define that build_config translates (fp16, a TrainingArguments field ...);
    anything else is an unknown argument, with a suggestion."""
    from .config.loading import PARALLEL_SIZES
    from .config.trainer_args import is_training_argument

    known = concern_fields(config_cls)
    for name in unknown:
        if not (name in PARALLEL_SIZES or name in ("fp16", "bf16")
                or ("trainer_args" in known and is_training_argument(name))):
            raise TailorkitError(f"tailorkit {verb}: unknown argument '--{name}'{suggest(name, known)}")
    return unknown


def parse(verb: str, argv: list[str], spec: Verb | None = None):
    """Parse ``argv`` for ``verb`` into its typed config: YAML file first, then flags."""
    spec = spec or _verbs()[verb]
    parser = build_parser(verb, spec)
    argv, unknown = split_flags(argv, spec.config_cls)
    ns, extra = parser.parse_known_args(argv)
    if extra:
        raise TailorkitError(f"tailorkit {verb}: unexpected argument {extra[0]!r}")
    values = {**vars(ns), **passthrough_flags(unknown, spec.config_cls, verb)}
    files = [values.pop("config_file", None), values.pop("config_flag", None)]
    merged: dict = {}
    origins: dict[str, str] = {}
    for path in filter(None, files):
        from_file = read_yaml(path)
        merged.update(from_file)
        origins.update(dict.fromkeys(from_file, str(path)))
    for key, value in values.items():
        merged.pop(key, None)
        for alias, canonical in aliases(spec.config_cls).items():
            if canonical == key:
                merged.pop(alias, None)
        merged[key] = value
        origins.pop(key, None)
    return build_config(spec.config_cls, merged, origins=origins)


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
