"""Settings of `tailorkit export` (ms-swift's argument names): merge adapters, quantize, verify, upload."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .fields import arg
from .train import ModelArgs

QUANT_METHODS = (None, "gptq", "awq", "bnb", "fp8")


@dataclass
class SourceArgs:
    adapters: list[str] = arg([], "peft adapter folders to merge into --model ('path' or 'name=path'; several are "
                              "merged together)")
    ckpt_dir: str | None = arg(None, "a training run's checkpoint (or output) folder: its args.yaml gives the base "
                               "model and dtype; sft, pt and rlhf (dpo, grpo, rm ...) checkpoints")


@dataclass
class ExportArgs:
    output_dir: str | None = arg(None, "folder to write the export into; it must not exist or be empty "
                                 "(required)")
    merge_lora: bool = arg(False, "fold the adapters (LoRA, DoRA and other mergeable peft types) and every module "
                           "trained next to them into the base weights")
    quant_method: str | None = arg(None, "quantize the language model's linear layers: gptq, awq (GPTQModel), bnb "
                                   "(bitsandbytes) or fp8 (needs a CUDA GPU)", choices=QUANT_METHODS)
    quant_bits: int = arg(4, "bits per weight: 4 or 8 (fp8 is always 8)", choices=(4, 8))
    group_size: int = arg(128, "gptq/awq: weights sharing one scale (must divide the layers' input size)")
    dataset: list[str] = arg([], "rows (any format sft reads; images are used): the last --verify_n_samples are "
                             "held out to verify the export, the rows before them calibrate gptq/awq")
    quant_n_samples: int = arg(256, "gptq/awq: most calibration rows")
    max_length: int = arg(2048, "longest encoded calibration/verification row in tokens (longer rows are an error)")
    verify_n_samples: int = arg(8, "rows compared after writing (held out of calibration); without --dataset, "
                                "built-in probe conversations are used")
    max_nll_increase: float = arg(0.5, "quantized exports fail when the mean NLL per supervised token on the "
                                  "held-out rows rises more than this (nats) over the unquantized model")

    def __post_init__(self):
        if self.quant_method not in QUANT_METHODS:
            raise ConfigError(f"quant_method {self.quant_method!r} is not one of gptq, awq, bnb, fp8")
        if self.quant_bits not in (4, 8):
            raise ConfigError(f"quant_bits must be 4 or 8, got {self.quant_bits}")
        if self.quant_method == "fp8" and self.quant_bits != 8:
            self.quant_bits = 8  # fp8 has one width; the default of 4 refers to the integer methods
        for name in ("group_size", "quant_n_samples", "max_length", "verify_n_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_nll_increase < 0:
            raise ConfigError(f"max_nll_increase must be >= 0, got {self.max_nll_increase}")


@dataclass
class HubArgs:
    push_to_hub: bool = arg(False, "upload the verified export to the Hugging Face hub (needs a token and network)")
    hub_model_id: str | None = arg(None, "hub repository to upload to, 'owner/name'")
    hub_private_repo: bool = arg(False, "create the hub repository as private")
    hub_token: str | None = arg(None, "hub token (default: the one saved by `hf auth login` or HF_TOKEN)")


@dataclass
class ExportConfig:
    """Everything `tailorkit export` needs."""

    model: ModelArgs = field(default_factory=ModelArgs)
    source: SourceArgs = field(default_factory=SourceArgs)
    export: ExportArgs = field(default_factory=ExportArgs)
    hub: HubArgs = field(default_factory=HubArgs)

    def __post_init__(self):
        if not self.model.model and not self.source.ckpt_dir:
            raise ConfigError("--model or --ckpt_dir is required")
        if not self.export.output_dir:
            raise ConfigError("--output_dir is required: the folder the export is written into")
        if not self.export.merge_lora and not self.export.quant_method:
            raise ConfigError("nothing to export: pass --merge_lora true (fold adapters into the base) and/or "
                              "--quant_method gptq|awq|bnb|fp8")
        if self.export.quant_method in ("gptq", "awq") and not self.export.dataset:
            raise ConfigError(f"--quant_method {self.export.quant_method} calibrates on data: pass --dataset "
                              "(rows in any format sft reads)")
        if self.hub.push_to_hub and not self.hub.hub_model_id:
            raise ConfigError("--push_to_hub needs --hub_model_id owner/name")
