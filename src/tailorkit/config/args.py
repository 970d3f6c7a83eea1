"""Typed settings, one small dataclass per concern. Field names are ms-swift's argument names.

Each field's ``help`` metadata is the one-line help the CLI prints; validation lives in
``__post_init__`` and says what to do.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field, fields

from ..errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _f(default, help: str, *, choices=None, aliases=()):
    meta = {"help": help, "choices": choices, "aliases": tuple(aliases)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelArgs:
    model: str | None = _f(None, "model id on the hub or local directory (required)")
    model_type: str | None = _f(None, "model family name; inferred from the model's config when omitted")
    torch_dtype: str = _f("auto", "weights dtype: auto (bf16 on a GPU that has it, else float32)", choices=DTYPES)
    attn_impl: str | None = _f(None, "attention implementation: sdpa, eager or flash_attention_2",
                               choices=(None, "sdpa", "eager", "flash_attention_2"))
    trust_remote_code: bool = _f(False, "allow the model repository's own Python code to run")
    max_pixels: int | None = _f(None, "image token budget: most pixels per image after resizing (saved with the "
                                "checkpoint's processor, so inference uses the same)")
    min_pixels: int | None = _f(None, "image token budget: fewest pixels per image after resizing (saved likewise)")
    video_max_frames: int | None = _f(None, "most frames sampled per video (processors that sample frames)")
    fps: float | None = _f(None, "frames per second sampled from videos (processors that sample frames)")

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
    dataset: list[str] = _f([], "training data: jsonl/json/csv/parquet files, `datasets` folders or hub ids; "
                            "'path#N' samples N rows (repeating when N exceeds the size)")
    val_dataset: list[str] = _f([], "validation data files; same forms as --dataset")
    split_dataset_ratio: float = _f(0.0, "fraction of --dataset held out for validation when no --val_dataset")
    max_length: int = _f(2048, "maximum encoded length in tokens, media tokens included")
    truncation_strategy: str = _f("raise", "samples over --max_length: raise, delete (skip, counted), or cut from "
                                  "the left/right (never through media; uncuttable ones are skipped, counted)",
                                  choices=("raise", "delete", "left", "right"))
    streaming: bool = _f(False, "read, check and encode rows lazily while training (needs --max_steps)")
    system: str | None = _f(None, "system prompt used for rows that have none")
    dataloader_num_workers: int = _f(0, "data loading worker processes")
    data_seed: int | None = _f(None, "seed for sampling 'path#N' and the validation split (default: --seed)")
    packing: bool = _f(False, "combine samples into rows of --packing_length tokens (best-fit-decreasing over the "
                       "whole dataset); each sample keeps its own positions and attends only to itself")
    packing_length: int | None = _f(None, "tokens per packed row (default: --max_length)")
    padding_free: bool = _f(False, "concatenate each batch into one row without padding (samples stay isolated)")

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
    train_type: str = _f("lora", "full, lora (dora, qlora), adalora, vera, boft, loha, lokr, ia3 (peft), lisa, or "
                         "dummy (train the adapters the model already has)", choices=TRAIN_TYPES,
                         aliases=("tuner_type",))
    lora_rank: int = _f(8, "LoRA rank r")
    lora_alpha: int = _f(32, "LoRA scaling alpha")
    lora_dropout: float = _f(0.05, "dropout on the LoRA path")
    target_modules: list[str] = _f(["all-linear"], "modules that get LoRA: 'all-linear' (every linear layer of "
                                   "the trained components) or module names")
    modules_to_save: list[str] = _f([], "modules trained fully and saved next to the adapter")
    freeze_vit: bool | None = _f(None, "keep the vision tower frozen (true when neither this nor --vit is given)")
    freeze_aligner: bool | None = _f(None, "keep the vision-to-language aligner (projector) frozen (true when "
                                     "neither this nor --aligner is given)")
    freeze_llm: bool | None = _f(None, "keep the language model frozen (false when neither this nor --llm is given)")
    # Explicit per-component plan; each one wins over the matching freeze_* flag, which must then be left unset.
    vit: str | None = _f(None, "vision tower: full, lora or frozen (overrides --freeze_vit)", choices=COMPONENT_MODES)
    aligner: str | None = _f(None, "aligner: full, lora or frozen (overrides --freeze_aligner)",
                             choices=COMPONENT_MODES)
    llm: str | None = _f(None, "language model (with lm_head): full, lora or frozen (overrides --freeze_llm)",
                         choices=COMPONENT_MODES)
    vit_lr: float | None = _f(None, "learning rate of the vision tower's parameter group (default --learning_rate)")
    aligner_lr: float | None = _f(None, "learning rate of the aligner's parameter group (default --learning_rate)")
    target_regex: str | None = _f(None, "regular expression of full module names that get the adapter "
                                  "(replaces --target_modules)")
    freeze_parameters: list[str] = _f([], "parameter-name prefixes to freeze after the plan is applied")
    trainable_parameters: list[str] = _f([], "parameter-name prefixes to train fully after the plan is applied")
    use_dora: bool = _f(False, "DoRA: weight-decomposed LoRA")
    use_rslora: bool = _f(False, "rank-stabilised LoRA scaling (alpha / sqrt(r))")
    lorap_lr_ratio: float | None = _f(None, "LoRA+: learning rate of lora_B = learning rate x this ratio (e.g. 16)")
    init_weights: str = _f("true", "adapter initialisation: true, false, gaussian, pissa, pissa_niter_N, olora, "
                           "orthogonal (peft's init_lora_weights)")
    quant_bits: int | None = _f(None, "load the frozen base weights in 4-bit NF4 or 8-bit (bitsandbytes) and train "
                                "an adapter on top (QLoRA)", choices=(None, 4, 8))
    lisa_activated_layers: int = _f(2, "lisa: number of LLM layers trained at a time")
    lisa_step_interval: int = _f(20, "lisa: optimizer steps between re-drawing the trained layers")
    use_galore: bool = _f(False, "GaLore: low-rank projected Adam on the fully trained matrices (galore-torch)")
    galore_rank: int = _f(128, "GaLore projection rank")
    galore_update_proj_gap: int = _f(50, "GaLore: optimizer steps between projection updates")
    galore_scale: float = _f(1.0, "GaLore: scale of the projected update")
    adapters: list[str] = _f([], "peft adapter folders the model ships (e.g. Phi-4-multimodal's vision-lora), "
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
    output_dir: str = _f("output", "where checkpoints, logs, the loss plot and the resolved config go")
    num_train_epochs: float = _f(3.0, "passes over the training data")
    max_steps: int = _f(-1, "stop after this many optimizer steps (overrides epochs when > 0)")
    learning_rate: float | None = _f(None, "peak learning rate (default 1e-4 for lora, 1e-5 for full)")
    per_device_train_batch_size: int = _f(1, "samples per device per forward pass")
    per_device_eval_batch_size: int = _f(1, "samples per device per evaluation forward pass")
    gradient_accumulation_steps: int = _f(1, "forward passes per optimizer step")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass to save memory")
    gradient_checkpointing_kwargs: dict = _f({"use_reentrant": False}, "JSON passed to gradient checkpointing")
    lr_scheduler_type: str = _f("cosine", "learning-rate schedule (transformers names: cosine, linear, constant...)")
    warmup_ratio: float = _f(0.0, "fraction of steps spent warming the learning rate up")
    weight_decay: float = _f(0.1, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping norm")
    logging_steps: int = _f(5, "log loss and learning rate every N optimizer steps")
    eval_steps: int | None = _f(None, "evaluate every N steps (default: --save_steps)")
    save_strategy: str = _f("steps", "when to save checkpoints: steps, epoch or no", choices=("steps", "epoch", "no"))
    save_steps: int = _f(500, "save a checkpoint every N optimizer steps")
    save_total_limit: int | None = _f(None, "keep at most this many checkpoints")
    seed: int = _f(42, "random seed for initialisation, shuffling and dropout")
    report_to: list[str] = _f(["none"], "experiment trackers: none, tensorboard, wandb ...")
    resume_from_checkpoint: str | None = _f(None, "checkpoint directory to resume from, or 'last' (the newest "
                                            "complete checkpoint in --output_dir)")
    resume_only_model: bool = _f(False, "with --resume_from_checkpoint: load only the weights and start a fresh "
                                 "run (new optimizer, schedule and data order); allows a changed config")
    strict_alarms: bool = _f(False, "make every training alarm fatal (stop, keep the last good checkpoint)")
    alarm_patience: int = _f(5, "logging steps a loss must stay exactly constant (or 0) before it raises an alarm")
    deepspeed: str | None = _f(None, "DeepSpeed preset (zero2, zero3) or config file; needs a GPU and deepspeed")
    group_by_length: bool = _f(False, "batch samples of similar length together (less padding; not with --packing)")
    use_liger_kernel: bool = _f(False, "Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear "
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
        if self.deepspeed is not None:
            _check_deepspeed(self.deepspeed)
        if self.use_liger_kernel:
            _check_liger()


def _check_deepspeed(value: str) -> None:
    import importlib.util

    import torch
    if not torch.cuda.is_available():
        raise ConfigError(f"deepspeed={value!r} needs a CUDA GPU and none is visible; drop the setting to train "
                          "on this machine")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"deepspeed={value!r} needs the deepspeed package: pip install 'tailorkit[gpu]'")


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


RLHF_TYPES = ("dpo", "orpo", "simpo", "cpo", "kto", "rm", "grpo")
DEFAULT_BETA = {"dpo": 0.1, "orpo": 0.1, "simpo": 2.0, "cpo": 0.1, "kto": 0.1, "rm": 0.0, "grpo": 0.04}
DEFAULT_LOSS = {"dpo": "sigmoid", "simpo": "simpo", "cpo": "sigmoid", "grpo": "grpo"}
LOSS_CHOICES = {"dpo": ("sigmoid", "ipo", "hinge", "robust"), "cpo": ("sigmoid", "hinge", "ipo", "simpo"),
                "simpo": ("simpo",), "grpo": ("grpo", "bnpo", "dr_grpo", "dapo")}


@dataclass
class RlhfArgs:
    """Settings of preference and reinforcement training (`tailorkit rlhf`); ms-swift's names."""

    rlhf_type: str = _f("dpo", "algorithm", choices=RLHF_TYPES)
    beta: float | None = _f(None, "strength of the preference / KL term (default: dpo, orpo, cpo, kto 0.1; "
                            "simpo 2.0; grpo 0.04)")
    loss_type: str | None = _f(None, "variant: dpo sigmoid|ipo|hinge|robust (default sigmoid); cpo/simpo "
                               "sigmoid|hinge|ipo|simpo; grpo grpo|bnpo|dr_grpo|dapo (default grpo)")
    label_smoothing: float = _f(0.0, "assumed fraction of flipped preference labels (dpo robust, cpo, simpo)")
    rpo_alpha: float | None = _f(None, "weight of the NLL on chosen replies added to the DPO loss (RPO)")
    simpo_gamma: float = _f(1.0, "SimPO target reward margin")
    cpo_alpha: float | None = _f(None, "weight of the NLL on chosen replies in CPO/SimPO (default cpo 1.0, simpo 0)")
    desirable_weight: float = _f(1.0, "KTO weight of desirable (label true) samples")
    undesirable_weight: float = _f(1.0, "KTO weight of undesirable (label false) samples")
    center_rewards_coefficient: float | None = _f(None, "rm: weight of a penalty pulling rewards towards 0")
    ref_model: str | None = _f(None, "reference model (default: the base with the LoRA adapter disabled, or a "
                               "frozen copy of the model for full training)")
    precompute_ref_log_probs: bool = _f(False, "dpo/kto: compute reference log-probs once before training "
                                        "instead of keeping a reference model")
    num_generations: int = _f(4, "grpo: completions sampled per prompt (the group)")
    max_completion_length: int = _f(64, "grpo: maximum new tokens per completion")
    temperature: float = _f(1.0, "grpo: sampling temperature of the rollouts")
    top_p: float = _f(1.0, "grpo: nucleus sampling of the rollouts")
    top_k: int = _f(0, "grpo: top-k sampling of the rollouts (0 = off)")
    reward_funcs: list[str] = _f([], "grpo: reward functions: accuracy, format, soft_overlong or names from "
                                 "--external_plugins")
    reward_weights: list[str] = _f([], "grpo: one weight per reward function (default all 1)")
    external_plugins: list[str] = _f([], "grpo: Python files defining reward functions "
                                     "f(completions, **columns) -> list[float]")
    epsilon: float = _f(0.2, "grpo: clipping range of the importance ratio")
    epsilon_high: float | None = _f(None, "grpo: upper clipping range (default: --epsilon)")
    importance_sampling_level: str = _f("token", "grpo: token (GRPO) or sequence (GSPO) importance ratio",
                                        choices=("token", "sequence"))
    scale_rewards: str = _f("group", "grpo: divide advantages by the reward std of the group, the batch, or "
                            "none", choices=("group", "batch", "none"))
    format_pattern: str = _f(r"^<think>.*?</think>\s*<answer>.*?</answer>$", "grpo: regex of the format reward")
    soft_cache_length: int | None = _f(None, "grpo: soft_overlong reward: penalty ramps over the last N tokens "
                                       "before --max_completion_length (default: a quarter of it)")
    reward_alarm_steps: int = _f(5, "warn when rewards are flat this many steps (grpo: constant in every group; "
                                 "dpo, kto, rm: chosen and rejected identical)")
    kl_alarm: float = _f(10.0, "grpo: warn when the mean KL to the reference exceeds this")

    def __post_init__(self):
        if self.rlhf_type not in RLHF_TYPES:
            raise ConfigError(f"rlhf_type {self.rlhf_type!r} is not one of {', '.join(RLHF_TYPES)}")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: GRPO's advantages compare completions of one prompt")
        if self.reward_weights and len(self.reward_weights) != len(self.reward_funcs):
            raise ConfigError(f"reward_weights has {len(self.reward_weights)} values for {len(self.reward_funcs)} "
                              "reward_funcs; give one weight per function")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        self._resolve_algorithm_defaults()

    def _resolve_algorithm_defaults(self) -> None:
        """Per-algorithm defaults (beta, loss_type, cpo_alpha) and the checks that depend on the algorithm."""
        kind = self.rlhf_type
        if self.beta is None:
            self.beta = DEFAULT_BETA[kind]
        if self.loss_type is None:
            self.loss_type = DEFAULT_LOSS.get(kind)
        if kind in LOSS_CHOICES and self.loss_type not in LOSS_CHOICES[kind]:
            raise ConfigError(f"loss_type {self.loss_type!r} does not apply to rlhf_type {kind}; choose one of "
                              f"{', '.join(LOSS_CHOICES[kind])}")
        if kind not in LOSS_CHOICES and self.loss_type is not None:
            raise ConfigError(f"rlhf_type {kind} has no loss_type variants; remove --loss_type")
        if self.cpo_alpha is None:
            self.cpo_alpha = 0.0 if kind == "simpo" else 1.0
        if self.precompute_ref_log_probs and kind not in ("dpo", "kto"):
            raise ConfigError("precompute_ref_log_probs applies to dpo and kto only")
        if self.precompute_ref_log_probs and self.ref_model:
            raise ConfigError("give either --ref_model or --precompute_ref_log_probs: precomputed log-probs come "
                              "from the model being trained, before its first step")
        if kind in ("dpo", "kto", "grpo") and self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")


@dataclass
class RlhfConfig(SftConfig):
    """Everything `tailorkit rlhf` needs: the sft concerns plus the algorithm's settings."""

    rlhf: RlhfArgs = field(default_factory=RlhfArgs)

    def __post_init__(self):
        super().__post_init__()
        if self.rlhf.rlhf_type == "grpo" and (self.data.val_dataset or self.data.split_dataset_ratio > 0):
            raise ConfigError("grpo has no validation loop in this version; remove --val_dataset / "
                              "--split_dataset_ratio")
