"""Settings of `tailorkit eval` (ms-swift argument names where they exist)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .fields import arg
from .infer import EngineArgs, GenerationArgs
from .train import ModelArgs

EVAL_BACKENDS = ("native", "evalscope")


@dataclass
class EvalArgs:
    eval_dataset: list[str] = arg([], "what to score: files or folders, optionally as LAYOUT:PATH with LAYOUT qa (your "
                                  "sft data), mcq (multiple choice by likelihood), mme, textvqa or vqav2; detected "
                                  "from the content otherwise")
    eval_limit: int | None = arg(None, "score at most the first N samples of each dataset (MME keeps image pairs "
                                 "whole)")
    eval_output_dir: str | None = arg(None, "folder for report.json and predictions.jsonl; unset: eval_output/<time> "
                                      "(inside --ckpt_dir when given)")
    eval_backend: str = arg("native", "native (our metrics over the infer engine) or evalscope (EvalScope against our "
                            "OpenAI-compatible server, for qa and mcq data)", choices=EVAL_BACKENDS)
    compare: list[str] = arg([], "earlier eval output folders (or their report.json) to print side by side with this "
                             "run, with the change from the first to this one")
    compare_base: bool = arg(False, "also score the base model (the adapters switched off, or the --model a full "
                             "--ckpt_dir was trained from) and print base vs fine-tuned with the deltas")
    system: str | None = arg(None, "system prompt for rows that have none; unset: the training run's")
    evalscope_python: str | None = arg(None, "python of the environment that has EvalScope; unset: .venv-evalscope "
                                       "next to this environment, made by scripts/setup_evalscope.sh")

    def __post_init__(self):
        if self.eval_backend not in EVAL_BACKENDS:
            raise ConfigError(f"eval_backend {self.eval_backend!r} is not one of {', '.join(EVAL_BACKENDS)}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ConfigError(f"eval_limit must be >= 1, got {self.eval_limit}")


@dataclass
class EvalConfig:
    """Everything `tailorkit eval` needs; generation is greedy (--temperature 0) unless told otherwise."""

    model: ModelArgs = field(default_factory=ModelArgs)
    engine: EngineArgs = field(default_factory=EngineArgs)
    generation: GenerationArgs = field(default_factory=GenerationArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)

    def __post_init__(self):
        if not self.model.model and not self.engine.ckpt_dir:
            raise ConfigError("--model or --ckpt_dir is required")
        if not self.eval.eval_dataset:
            raise ConfigError("--eval_dataset is required: files or folders to score (LAYOUT:PATH or PATH)")
