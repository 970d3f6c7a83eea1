"""Settings of `tailorkit rlhf`: the sft concerns plus three groups, ms-swift's argument names throughout.

``RlhfArgs`` holds what every algorithm reads (which algorithm, beta, loss variant, reference model),
``PreferenceArgs`` what only the pairwise / KTO / reward-model losses read, ``GrpoArgs`` what only GRPO's
rollouts and rewards read. On the command line and in YAML files they are one flat list, as in ms-swift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .fields import arg
from .train import SftConfig

RLHF_TYPES = ("dpo", "orpo", "simpo", "cpo", "kto", "rm", "grpo")
DEFAULT_BETA = {"dpo": 0.1, "orpo": 0.1, "simpo": 2.0, "cpo": 0.1, "kto": 0.1, "rm": 0.0, "grpo": 0.04}
DEFAULT_LOSS = {"dpo": "sigmoid", "simpo": "simpo", "cpo": "sigmoid", "grpo": "grpo"}
LOSS_CHOICES = {"dpo": ("sigmoid", "ipo", "hinge", "robust"), "cpo": ("sigmoid", "hinge", "ipo", "simpo"),
                "simpo": ("simpo",), "grpo": ("grpo", "bnpo", "dr_grpo", "dapo")}
REFERENCE_TYPES = ("dpo", "kto", "grpo")  # the algorithms with a reference policy (grpo: when beta != 0)


@dataclass
class RlhfArgs:
    """What every algorithm reads: which one, its strength, its loss variant, its reference."""

    rlhf_type: str = arg("dpo", "algorithm", choices=RLHF_TYPES)
    beta: float | None = arg(None, "strength of the preference / KL term (default: dpo, orpo, cpo, kto 0.1; "
                             "simpo 2.0; grpo 0.04)")
    loss_type: str | None = arg(None, "variant: dpo sigmoid|ipo|hinge|robust (default sigmoid); cpo/simpo "
                                "sigmoid|hinge|ipo|simpo; grpo grpo|bnpo|dr_grpo|dapo (default grpo)")
    ref_model: str | None = arg(None, "reference model (default: the base with the LoRA adapter disabled, or a "
                                "frozen copy of the model for full training)")
    reward_alarm_steps: int = arg(5, "warn when rewards are flat this many steps (grpo: constant in every group; "
                                  "dpo, kto, rm: chosen and rejected identical)")

    def __post_init__(self):
        kind = self.rlhf_type
        if kind not in RLHF_TYPES:
            raise ConfigError(f"rlhf_type {kind!r} is not one of {', '.join(RLHF_TYPES)}")
        if self.beta is None:
            self.beta = DEFAULT_BETA[kind]
        if self.loss_type is None:
            self.loss_type = DEFAULT_LOSS.get(kind)
        if kind in LOSS_CHOICES and self.loss_type not in LOSS_CHOICES[kind]:
            raise ConfigError(f"loss_type {self.loss_type!r} does not apply to rlhf_type {kind}; choose one of "
                              f"{', '.join(LOSS_CHOICES[kind])}")
        if kind not in LOSS_CHOICES and self.loss_type is not None:
            raise ConfigError(f"rlhf_type {kind} has no loss_type variants; remove --loss_type")
        if kind in REFERENCE_TYPES and self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")


@dataclass
class PreferenceArgs:
    """What the preference losses read: dpo, orpo, simpo, cpo (pairs), kto (labelled samples), rm (pairs)."""

    label_smoothing: float = arg(0.0, "assumed fraction of flipped preference labels (dpo robust, cpo, simpo)")
    rpo_alpha: float | None = arg(None, "weight of the NLL on chosen replies added to the DPO loss (RPO)")
    simpo_gamma: float = arg(1.0, "SimPO target reward margin")
    cpo_alpha: float | None = arg(None, "weight of the NLL on chosen replies in CPO/SimPO (default cpo 1.0, "
                                  "simpo 0)")
    desirable_weight: float = arg(1.0, "KTO weight of desirable (label true) samples")
    undesirable_weight: float = arg(1.0, "KTO weight of undesirable (label false) samples")
    center_rewards_coefficient: float | None = arg(None, "rm: weight of a penalty pulling rewards towards 0")
    precompute_ref_log_probs: bool = arg(False, "dpo/kto: compute reference log-probs once before training "
                                         "instead of keeping a reference model")

    def __post_init__(self):
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


@dataclass
class GrpoArgs:
    """What GRPO reads: rollouts (sampling), rewards, the clipped objective and its alarms."""

    num_generations: int = arg(4, "grpo: completions sampled per prompt (the group)")
    max_completion_length: int = arg(64, "grpo: maximum new tokens per completion")
    temperature: float = arg(1.0, "grpo: sampling temperature of the rollouts")
    top_p: float = arg(1.0, "grpo: nucleus sampling of the rollouts")
    top_k: int = arg(0, "grpo: top-k sampling of the rollouts (0 = off)")
    reward_funcs: list[str] = arg([], "grpo: reward functions: accuracy, format, soft_overlong or names from "
                                  "--external_plugins")
    reward_weights: list[str] = arg([], "grpo: one weight per reward function (default all 1)")
    epsilon: float = arg(0.2, "grpo: clipping range of the importance ratio")
    epsilon_high: float | None = arg(None, "grpo: upper clipping range (default: --epsilon)")
    importance_sampling_level: str = arg("token", "grpo: token (GRPO) or sequence (GSPO) importance ratio",
                                         choices=("token", "sequence"))
    scale_rewards: str = arg("group", "grpo: divide advantages by the reward std of the group, the batch, or "
                             "none", choices=("group", "batch", "none"))
    format_pattern: str = arg(r"^<think>.*?</think>\s*<answer>.*?</answer>$", "grpo: regex of the format reward")
    soft_cache_length: int | None = arg(None, "grpo: soft_overlong reward: penalty ramps over the last N tokens "
                                        "before --max_completion_length (default: a quarter of it)")
    kl_alarm: float = arg(10.0, "grpo: warn when the mean KL to the reference exceeds this")

    def __post_init__(self):
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: GRPO's advantages compare completions of one prompt")
        if self.reward_weights and len(self.reward_weights) != len(self.reward_funcs):
            raise ConfigError(f"reward_weights has {len(self.reward_weights)} values for {len(self.reward_funcs)} "
                              "reward_funcs; give one weight per function")


@dataclass
class RlhfConfig(SftConfig):
    """Everything `tailorkit rlhf` needs: the sft concerns plus the algorithm's settings."""

    rlhf: RlhfArgs = field(default_factory=RlhfArgs)
    preference: PreferenceArgs = field(default_factory=PreferenceArgs)
    grpo: GrpoArgs = field(default_factory=GrpoArgs)

    def __post_init__(self):
        super().__post_init__()
        if self.train.eval_dataset:
            raise ConfigError("--eval_dataset (generation metrics during training) is available for sft and pt in "
                              "this version; score rlhf checkpoints with `tailorkit eval`")
        kind, pref = self.rlhf.rlhf_type, self.preference
        if pref.cpo_alpha is None:
            pref.cpo_alpha = 0.0 if kind == "simpo" else 1.0
        if pref.precompute_ref_log_probs and kind not in ("dpo", "kto"):
            raise ConfigError("precompute_ref_log_probs applies to dpo and kto only")
        if pref.precompute_ref_log_probs and self.rlhf.ref_model:
            raise ConfigError("give either --ref_model or --precompute_ref_log_probs: precomputed log-probs come "
                              "from the model being trained, before its first step")
        if kind == "grpo" and (self.data.val_dataset or self.data.split_dataset_ratio > 0):
            raise ConfigError("grpo has no validation loop in this version; remove --val_dataset / "
                              "--split_dataset_ratio")
        for flag in ("streaming", "packing", "padding_free"):
            if getattr(self.data, flag):
                raise ConfigError(f"--{flag} applies to sft and pt only: rlhf batches pairs, labelled samples or "
                                  "prompts as they are; remove it")
