"""Settings of training runs (`tailorkit sft`, `pt`; `rlhf` adds config/rlhf.py): one small dataclass per concern.

Field names are ms-swift's argument names. Each field's ``help`` is the one-line help the CLI prints;
validation lives in ``__post_init__`` and says what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import ConfigError
from .distributed import DistributedArgs
from .fields import arg, concern_fields

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelArgs:
    model: str | None = arg(None, "model id on the hub or local directory (required)")
    model_type: str | None = arg(None, "model family name; inferred from the model's config when omitted")
    torch_dtype: str = arg("auto", "weights dtype: auto (bf16 on a GPU that has it, else float32)", choices=DTYPES)
    attn_impl: str | None = arg(None, "attention implementation: sdpa, eager or flash_attention_2",
                               choices=(None, "sdpa", "eager", "flash_attention_2"))
    trust_remote_code: bool = arg(False, "allow the model repository's own Python code to run")
    max_pixels: int | None = arg(None, "image token budget: most pixels per image after resizing (saved with the "
                                "checkpoint's processor, so inference uses the same)")
    min_pixels: int | None = arg(None, "image token budget: fewest pixels per image after resizing (saved likewise)")
    video_max_frames: int | None = arg(None, "most frames decoded per video, evenly spread (after --fps)")
    fps: float | None = arg(None, "frames per second decoded from video files (evenly spread; default: every frame)")
    agent_template: str | None = arg(None, "render tools, tool calls and results for a model whose chat template "
                                     "lacks them: hermes (<tool_call>/<tool_response> text); saved with the "
                                     "checkpoint's template", choices=(None, "hermes"))

    def __post_init__(self):
        if self.torch_dtype not in DTYPES:
            raise ConfigError(f"torch_dtype {self.torch_dtype!r} is not one of {', '.join(DTYPES)}")
        for name in ("max_pixels", "min_pixels", "video_max_frames", "fps"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_pixels and self.min_pixels and self.min_pixels > self.max_pixels:
            raise ConfigError(f"min_pixels {self.min_pixels} is larger than max_pixels {self.max_pixels}")


@dataclass
class DataArgs:
    dataset: list[str] = arg([], "training data: jsonl/json/csv/parquet files, `datasets` folders or hub ids; "
                            "'path#N' samples N rows (repeating when N exceeds the size)")
    val_dataset: list[str] = arg([], "validation data files; same forms as --dataset")
    split_dataset_ratio: float = arg(0.0, "fraction of --dataset held out for validation when no --val_dataset")
    max_length: int = arg(2048, "maximum encoded length in tokens, media tokens included")
    truncation_strategy: str = arg("raise", "samples over --max_length: raise, delete (skip, counted), or cut from "
                                  "the left/right (never through media; uncuttable ones are skipped, counted)",
                                  choices=("raise", "delete", "left", "right"))
    streaming: bool = arg(False, "read, check and encode rows lazily while training (needs --max_steps)")
    system: str | None = arg(None, "system prompt used for rows that have none")
    dataloader_num_workers: int = arg(0, "data loading worker processes")
    data_seed: int | None = arg(None, "seed for sampling 'path#N' and the validation split (default: --seed)")
    packing: bool = arg(False, "combine samples into rows of --packing_length tokens (best-fit-decreasing over the "
                       "whole dataset); each sample keeps its own positions and attends only to itself")
    packing_length: int | None = arg(None, "tokens per packed row (default: --max_length)")
    padding_free: bool = arg(False, "concatenate each batch into one row without padding (samples stay isolated)")

    def __post_init__(self):
        if not 0.0 <= self.split_dataset_ratio < 1.0:
            raise ConfigError(f"split_dataset_ratio must be in [0, 1), got {self.split_dataset_ratio}")
        if self.max_length <= 0:
            raise ConfigError(f"max_length must be positive, got {self.max_length}")
        if self.packing_length is not None and self.packing_length < self.max_length:
            raise ConfigError(f"packing_length {self.packing_length} is below max_length {self.max_length}: a sample "
                              "could fit no row; lower --max_length too (over-long samples then follow "
                              "--truncation_strategy)")


TRAIN_TYPES = ("full", "lora", "dora", "qlora", "adalora", "vera", "boft", "loha", "lokr", "ia3", "lisa", "dummy")
COMPONENT_MODES = (None, "full", "lora", "frozen")


@dataclass
class TunerArgs:
    train_type: str = arg("lora", "full, lora (dora, qlora), adalora, vera, boft, loha, lokr, ia3 (peft), lisa, or "
                         "dummy (train the adapters the model already has)", choices=TRAIN_TYPES,
                         aliases=("tuner_type",))
    lora_rank: int = arg(8, "LoRA rank r")
    lora_alpha: int = arg(32, "LoRA scaling alpha")
    lora_dropout: float = arg(0.05, "dropout on the LoRA path")
    target_modules: list[str] = arg(["all-linear"], "modules that get LoRA: 'all-linear' (every linear layer of "
                                   "the trained components) or module names")
    modules_to_save: list[str] = arg([], "modules trained fully and saved next to the adapter")
    freeze_vit: bool | None = arg(None, "keep the vision tower frozen (true when neither this nor --vit is given)")
    freeze_aligner: bool | None = arg(None, "keep the vision-to-language aligner (projector) frozen (true when "
                                     "neither this nor --aligner is given)")
    freeze_llm: bool | None = arg(None, "keep the language model frozen (false when neither this nor --llm is given)")
    # Explicit per-component plan; each one wins over the matching freeze_* flag, which must then be left unset.
    vit: str | None = arg(None, "vision tower: full, lora or frozen (overrides --freeze_vit)", choices=COMPONENT_MODES)
    aligner: str | None = arg(None, "aligner: full, lora or frozen (overrides --freeze_aligner)",
                             choices=COMPONENT_MODES)
    llm: str | None = arg(None, "language model (with lm_head): full, lora or frozen (overrides --freeze_llm)",
                         choices=COMPONENT_MODES)
    vit_lr: float | None = arg(None, "learning rate of the vision tower's parameter group (default --learning_rate)")
    aligner_lr: float | None = arg(None, "learning rate of the aligner's parameter group (default --learning_rate)")
    target_regex: str | None = arg(None, "regular expression of full module names that get the adapter "
                                  "(replaces --target_modules)")
    freeze_parameters: list[str] = arg([], "parameter-name prefixes to freeze after the plan is applied")
    trainable_parameters: list[str] = arg([], "parameter-name prefixes to train fully after the plan is applied")
    use_dora: bool = arg(False, "DoRA: weight-decomposed LoRA")
    use_rslora: bool = arg(False, "rank-stabilised LoRA scaling (alpha / sqrt(r))")
    lorap_lr_ratio: float | None = arg(None, "LoRA+: learning rate of lora_B = learning rate x this ratio (e.g. 16)")
    init_weights: str = arg("true", "adapter initialisation: true, false, gaussian, pissa, pissa_niter_N, olora, "
                           "orthogonal (peft's init_lora_weights)")
    quant_bits: int | None = arg(None, "load the frozen base weights in 4-bit NF4 or 8-bit (bitsandbytes) and train "
                                "an adapter on top (QLoRA)", choices=(None, 4, 8))
    lisa_activated_layers: int = arg(2, "lisa: number of LLM layers trained at a time")
    lisa_step_interval: int = arg(20, "lisa: optimizer steps between re-drawing the trained layers")
    use_galore: bool = arg(False, "GaLore: low-rank projected Adam on the fully trained matrices (galore-torch)")
    galore_rank: int = arg(128, "GaLore projection rank")
    galore_update_proj_gap: int = arg(50, "GaLore: optimizer steps between projection updates")
    galore_scale: float = arg(1.0, "GaLore: scale of the projected update")
    adapters: list[str] = arg([], "peft adapter folders the model ships (e.g. Phi-4-multimodal's vision-lora), "
                             "loaded before the plan; train them with --train_type dummy")

    def __post_init__(self):
        if self.train_type not in TRAIN_TYPES:
            raise ConfigError(f"train_type {self.train_type!r} is not one of {', '.join(TRAIN_TYPES)}")
        if self.lora_rank <= 0:
            raise ConfigError(f"lora_rank must be positive, got {self.lora_rank}")
        if self.quant_bits not in (None, 4, 8):
            raise ConfigError(f"quant_bits must be 4 or 8, got {self.quant_bits}")


@dataclass
class TrainArgs:
    output_dir: str = arg("output", "where checkpoints, logs, the loss plot and the resolved config go")
    num_train_epochs: float = arg(3.0, "passes over the training data")
    max_steps: int = arg(-1, "stop after this many optimizer steps (overrides epochs when > 0)")
    learning_rate: float | None = arg(None, "peak learning rate (default 1e-4 for lora, 1e-5 for full)")
    per_device_train_batch_size: int = arg(1, "samples per device per forward pass")
    per_device_eval_batch_size: int = arg(1, "samples per device per evaluation forward pass")
    gradient_accumulation_steps: int = arg(1, "forward passes per optimizer step")
    gradient_checkpointing: bool = arg(False, "recompute activations in the backward pass to save memory")
    gradient_checkpointing_kwargs: dict = arg({"use_reentrant": False}, "JSON passed to gradient checkpointing")
    lr_scheduler_type: str = arg("cosine", "learning-rate schedule (transformers names: cosine, linear, constant...)")
    warmup_ratio: float = arg(0.0, "fraction of steps spent warming the learning rate up")
    weight_decay: float = arg(0.1, "AdamW weight decay")
    max_grad_norm: float = arg(1.0, "gradient clipping norm")
    logging_steps: int = arg(5, "log loss and learning rate every N optimizer steps")
    eval_steps: int | None = arg(None, "evaluate every N steps (default: --save_steps)")
    eval_strategy: str | None = arg(None, "when to evaluate (eval loss on the validation set, and --eval_dataset): "
                                    "steps, epoch or no (default: as --save_strategy)",
                                    choices=(None, "steps", "epoch", "no"))
    eval_dataset: list[str] = arg([], "sft: also score these with `tailorkit eval`'s native metrics (exact match, "
                                  "ROUGE-L, VQA accuracy, MME ...) at every evaluation, logged next to the loss; "
                                  "same forms as `tailorkit eval --eval_dataset`")
    eval_limit: int | None = arg(None, "score at most the first N samples of each --eval_dataset")
    eval_max_new_tokens: int = arg(64, "longest reply generated for --eval_dataset during training (greedy)")
    save_strategy: str = arg("steps", "when to save checkpoints: steps, epoch or no", choices=("steps", "epoch", "no"))
    save_steps: int = arg(500, "save a checkpoint every N optimizer steps")
    save_total_limit: int | None = arg(None, "keep at most this many checkpoints")
    seed: int = arg(42, "random seed for initialisation, shuffling and dropout")
    report_to: list[str] = arg(["none"], "experiment trackers: none, tensorboard, wandb ...")
    resume_from_checkpoint: str | None = arg(None, "checkpoint directory to resume from, or 'last' (the newest "
                                            "complete checkpoint in --output_dir)")
    resume_only_model: bool = arg(False, "with --resume_from_checkpoint: load only the weights and start a fresh "
                                 "run (new optimizer, schedule and data order); allows a changed config")
    strict_alarms: bool = arg(False, "make every training alarm fatal (stop, keep the last good checkpoint)")
    alarm_patience: int = arg(5, "logging steps a loss must stay exactly constant (or 0) before it raises an alarm")
    group_by_length: bool = arg(False, "batch samples of similar length together (less padding; not with --packing)")
    use_liger_kernel: bool = arg(False, "Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear "
                                 "cross-entropy) for the families Liger supports; needs a CUDA GPU and liger-kernel")

    def __post_init__(self):
        if isinstance(self.gradient_checkpointing_kwargs, str):
            try:
                self.gradient_checkpointing_kwargs = json.loads(self.gradient_checkpointing_kwargs)
            except json.JSONDecodeError as e:
                raise ConfigError(f"gradient_checkpointing_kwargs is not valid JSON: {e}") from None
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError("per_device_train_batch_size and gradient_accumulation_steps must be >= 1")
        if self.alarm_patience < 1:
            raise ConfigError(f"alarm_patience must be >= 1 logging step, got {self.alarm_patience}")
        if self.use_liger_kernel:
            _check_liger()
        if self.eval_dataset and self.resolved_eval_strategy() == "no":
            raise ConfigError("--eval_dataset is scored at each evaluation: set --eval_strategy steps or epoch")

    def resolved_eval_strategy(self) -> str:
        """--eval_strategy, or the one that follows --save_strategy."""
        return self.eval_strategy or self.save_strategy


def _check_liger() -> None:
    import importlib.util

    import torch
    if not torch.cuda.is_available():
        raise ConfigError("--use_liger_kernel needs a CUDA GPU (Liger's kernels are Triton GPU kernels) and none "
                          "is visible; drop --use_liger_kernel to train on this machine")
    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("--use_liger_kernel needs the liger-kernel package: pip install 'liger-kernel>=0.8.5' "
                          "(or pip install 'tailorkit[gpu]')")


@dataclass
class SftConfig:
    """Everything `tailorkit sft` and `tailorkit pt` need."""

    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    tuner: TunerArgs = field(default_factory=TunerArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    dist: DistributedArgs = field(default_factory=DistributedArgs)

    def __post_init__(self):
        if not self.model.model:
            raise ConfigError("--model is required: a hub id or a local model directory")
        if not self.data.dataset:
            raise ConfigError("--dataset is required: one or more data files")
        if self.train.learning_rate is None:
            self.train.learning_rate = 1e-5 if self.tuner.train_type in ("full", "lisa") else 1e-4
        if self.data.streaming and self.train.max_steps <= 0:
            raise ConfigError("--streaming true needs --max_steps: a stream has no known length to count epochs in")
        if self.data.streaming and self.data.split_dataset_ratio > 0:
            raise ConfigError("--streaming true cannot hold out --split_dataset_ratio; give --val_dataset instead")
        if self.model.torch_dtype == "float16":
            import torch
            if not torch.cuda.is_available():
                raise ConfigError("float16 training (fp16) needs a CUDA GPU; use --torch_dtype float32 on CPU")

    def flat(self) -> dict:
        """Every resolved setting under its argument name (the form the CLI and YAML files take)."""
        return {name: getattr(getattr(self, concern), name) for name, (concern, _, _) in concern_fields(type(self)).items()}
