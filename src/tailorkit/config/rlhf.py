"""Settings of `tailorkit rlhf`: the sft concerns plus the algorithms' groups, ms-swift's argument names throughout.

``RlhfArgs`` holds what every algorithm reads (which algorithm, beta, loss variant, reference model),
``PreferenceArgs`` what only the pairwise / KTO / reward-model losses read, ``GrpoArgs`` what the online
algorithms' rollouts and rewards read (grpo, ppo; gkd's on-policy samples use its sampling settings),
``PpoArgs`` PPO's value and advantage settings, ``GkdArgs`` the teacher of on-policy distillation. On the
command line and in YAML files they are one flat list, as in ms-swift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .fields import arg
from .train import SftConfig

RLHF_TYPES = ("dpo", "orpo", "simpo", "cpo", "kto", "rm", "ppo", "gkd", "grpo")
DEFAULT_BETA = {"dpo": 0.1, "orpo": 0.1, "simpo": 2.0, "cpo": 0.1, "kto": 0.1, "rm": 0.0, "ppo": 0.0, "gkd": 0.5,
                "grpo": 0.04}
DEFAULT_LOSS = {"dpo": "sigmoid", "simpo": "simpo", "cpo": "sigmoid", "grpo": "grpo"}
LOSS_CHOICES = {"dpo": ("sigmoid", "ipo", "hinge", "robust"), "cpo": ("sigmoid", "hinge", "ipo", "simpo"),
                "simpo": ("simpo",), "grpo": ("grpo", "bnpo", "dr_grpo", "dapo")}
REFERENCE_TYPES = ("dpo", "kto", "grpo", "ppo")  # the algorithms with a reference policy (grpo, ppo: KL weight != 0)
ONLINE_TYPES = ("grpo", "ppo")  # sample completions of prompt rows and score them with rewards
ADVANTAGE_ESTIMATORS = ("grpo", "rloo", "reinforce_plus_plus")
# --scale_rewards when not given, as in ms-swift: what each estimator's paper divides by
DEFAULT_SCALE = {"grpo": "group", "rloo": "none", "reinforce_plus_plus": "batch"}


@dataclass
class RlhfArgs:
    """What every algorithm reads: which one, its strength, its loss variant, its reference."""

    rlhf_type: str = arg("dpo", "algorithm", choices=RLHF_TYPES)
    beta: float | None = arg(None, "strength of the preference / KL term (default: dpo, orpo, cpo, kto 0.1; "
                             "simpo 2.0; grpo 0.04; gkd 0.5 = the JSD's interpolation, 0 forward KL, 1 reverse KL; "
                             "ppo uses --kl_coef)")
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
        if kind == "ppo" and self.beta not in (None, 0.0):
            raise ConfigError("ppo's weight of the KL to the reference is --kl_coef (default 0.05); remove --beta")
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
        if kind == "gkd" and not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"gkd's beta interpolates the JSD between forward (0) and reverse (1) KL; got "
                              f"{self.beta}")


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
    concatenated_forward: bool = arg(True, "dpo, orpo, simpo, cpo, rm: chosen and rejected in one forward pass; "
                                     "false runs them separately, which under DDP with reentrant gradient "
                                     "checkpointing fails ('mark a variable ready only once')")

    def __post_init__(self):
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


@dataclass
class GrpoArgs:
    """The online algorithms' rollouts and rewards (grpo, ppo; gkd samples with the same settings)."""

    num_generations: int = arg(4, "grpo: completions sampled per prompt (the group)")
    max_completion_length: int = arg(64, "grpo, ppo, gkd: maximum new tokens per completion (per turn)")
    temperature: float = arg(1.0, "grpo, ppo, gkd: sampling temperature (gkd: also of the distillation loss)")
    top_p: float = arg(1.0, "grpo, ppo, gkd: nucleus sampling of the rollouts")
    top_k: int = arg(0, "grpo, ppo, gkd: top-k sampling of the rollouts (0 = off)")
    reward_funcs: list[str] = arg([], "grpo, ppo: reward functions: accuracy, format, soft_overlong or names from "
                                  "--external_plugins")
    reward_model: list[str] = arg([], "grpo, ppo: reward models (checkpoints of `rlhf --rlhf_type rm`) scoring each "
                                  "completion next to --reward_funcs")
    reward_weights: list[str] = arg([], "grpo, ppo: one weight per reward function, then per reward model "
                                    "(default all 1)")
    external_plugins: list[str] = arg([], "grpo, ppo: Python files defining reward functions "
                                      "f(completions, **columns) -> list[float] and multi-turn schedulers")
    epsilon: float = arg(0.2, "grpo: clipping range of the importance ratio")
    epsilon_high: float | None = arg(None, "grpo: upper clipping range (DAPO's clip-higher; default: --epsilon)")
    importance_sampling_level: str = arg("token", "grpo: token (GRPO) or sequence (GSPO) importance ratio",
                                         choices=("token", "sequence"))
    advantage_estimator: str = arg("grpo", "grpo: group mean/std (grpo), leave-one-out baseline (rloo) or group "
                                   "baseline over the batch std (reinforce_plus_plus)", choices=ADVANTAGE_ESTIMATORS)
    scale_rewards: str | None = arg(None, "grpo: divide advantages by the reward std of the group, the batch, or "
                                    "none (default: grpo group, rloo none, reinforce_plus_plus batch)",
                                    choices=(None, "group", "batch", "none"))
    kl_in_reward: bool | None = arg(None, "grpo: subtract beta x the sequence KL to the reference from the reward "
                                    "instead of adding it to the loss (default: false for grpo, true for rloo and "
                                    "reinforce_plus_plus)")
    num_iterations: int = arg(1, "grpo: optimizer steps on each rollout (> 1: the clipped ratio moves off 1)")
    dynamic_sample: bool = arg(False, "grpo: DAPO dynamic sampling: groups whose rewards are all equal are sampled "
                               "again (up to --max_resample_times), counted in the log")
    max_resample_times: int = arg(3, "grpo: most extra samplings of a zero-variance group with --dynamic_sample")
    overlong_filter: bool = arg(False, "grpo: leave completions cut at --max_completion_length (no end of "
                                "sequence) out of the loss")
    multi_turn_scheduler: str | None = arg(None, "grpo: multi-turn rollouts: name of a function from "
                                           "--external_plugins, f(messages, **columns) -> next user/tool message "
                                           "{'role', 'content'} or None to stop")
    max_turns: int | None = arg(None, "grpo: most model turns of a multi-turn rollout (default: until the scheduler "
                                "stops or the conversation reaches --max_length)")
    format_pattern: str = arg(r"^<think>.*?</think>\s*<answer>.*?</answer>$", "grpo: regex of the format reward")
    soft_cache_length: int | None = arg(None, "grpo: soft_overlong reward: penalty ramps over the last N tokens "
                                        "before --max_completion_length (default: a quarter of it)")
    kl_alarm: float = arg(10.0, "grpo: warn when the mean KL to the reference exceeds this")

    def __post_init__(self):
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2: GRPO's advantages compare completions of one prompt")
        n_sources = len(self.reward_funcs) + len(self.reward_model)
        if self.reward_weights and len(self.reward_weights) != n_sources:
            raise ConfigError(f"reward_weights has {len(self.reward_weights)} values for {len(self.reward_funcs)} "
                              f"reward_funcs and {len(self.reward_model)} reward_model; give one weight per function, "
                              "then one per reward model")
        if self.num_iterations < 1 or self.max_resample_times < 0 or (self.max_turns is not None
                                                                       and self.max_turns < 1):
            raise ConfigError("num_iterations and max_turns must be >= 1, max_resample_times >= 0")
        if self.max_turns is not None and not self.multi_turn_scheduler:
            raise ConfigError("--max_turns limits multi-turn rollouts; give --multi_turn_scheduler too")
        if self.scale_rewards is None:
            self.scale_rewards = DEFAULT_SCALE[self.advantage_estimator]
        if self.kl_in_reward is None:
            self.kl_in_reward = self.advantage_estimator != "grpo"


@dataclass
class PpoArgs:
    """PPO's value head, advantages and clipped objective (TRL's and ms-swift's names)."""

    num_ppo_epochs: int = arg(4, "ppo: optimizer steps on each rollout")
    kl_coef: float = arg(0.05, "ppo: weight of the per-token KL penalty to the reference in the reward")
    kl_estimator: str = arg("k1", "ppo: per-token KL estimate in the reward: k1 (log-ratio) or k3",
                            choices=("k1", "k3"))
    cliprange: float = arg(0.2, "ppo: clipping range of the policy ratio")
    cliprange_value: float = arg(0.2, "ppo: clipping range of the value prediction around the rollout's values")
    vf_coef: float = arg(0.1, "ppo: weight of the value loss")
    gamma: float = arg(1.0, "ppo: discount factor")
    lam: float = arg(0.95, "ppo: GAE lambda")
    whiten_rewards: bool = arg(False, "ppo: whiten the per-token rewards before GAE")
    missing_eos_penalty: float | None = arg(None, "ppo: subtracted from the score of a completion that never ends")
    value_model: str | None = arg(None, "ppo: separate value model (a base or a reward model checkpoint) whose "
                                  "frozen backbone feeds the trained value head (default: a value head on the "
                                  "policy, sharing its backbone)")

    def __post_init__(self):
        if self.num_ppo_epochs < 1:
            raise ConfigError(f"num_ppo_epochs must be >= 1, got {self.num_ppo_epochs}")
        if self.kl_coef < 0 or self.vf_coef < 0:
            raise ConfigError("kl_coef and vf_coef must be >= 0")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ConfigError(f"gamma and lam must be in [0, 1], got {self.gamma} and {self.lam}")


@dataclass
class GkdArgs:
    """The teacher of GKD (generalized knowledge distillation, on-policy when --lmbda > 0)."""

    teacher_model: str | None = arg(None, "gkd: teacher model (default with --teacher_adapters: --model); --model "
                                    "itself with an adapter-trained student is the student with its adapter "
                                    "disabled (no second copy)")
    teacher_adapters: list[str] = arg([], "gkd: peft adapters merged into the teacher (e.g. an sft run of the same "
                                      "base)")
    lmbda: float = arg(0.5, "gkd: share of batches whose completions the student generates (on-policy); the rest "
                        "use the dataset's replies")
    seq_kd: bool = arg(False, "gkd: the other batches use completions the teacher generates instead of the dataset's")
    gkd_logits_topk: int | None = arg(None, "gkd: keep only the teacher's top-k logits per token (both "
                                      "distributions renormalised over them), to save memory")

    def __post_init__(self):
        if not 0.0 <= self.lmbda <= 1.0:
            raise ConfigError(f"lmbda is a probability, got {self.lmbda}")
        if self.gkd_logits_topk is not None and self.gkd_logits_topk < 1:
            raise ConfigError(f"gkd_logits_topk must be >= 1, got {self.gkd_logits_topk}")


@dataclass
class RlhfConfig(SftConfig):
    """Everything `tailorkit rlhf` needs: the sft concerns plus the algorithm's settings."""

    rlhf: RlhfArgs = field(default_factory=RlhfArgs)
    preference: PreferenceArgs = field(default_factory=PreferenceArgs)
    grpo: GrpoArgs = field(default_factory=GrpoArgs)
    ppo: PpoArgs = field(default_factory=PpoArgs)
    gkd: GkdArgs = field(default_factory=GkdArgs)

    def __post_init__(self):
        super().__post_init__()
        if self.train.eval_dataset:
            raise ConfigError("--eval_dataset (generation metrics during training) is available for sft and pt in "
                              "this version; score rlhf checkpoints with `tailorkit eval` (grpo and ppo log the "
                              "mean reward on --val_dataset)")
        kind, pref = self.rlhf.rlhf_type, self.preference
        if pref.cpo_alpha is None:
            pref.cpo_alpha = 0.0 if kind == "simpo" else 1.0
        if pref.precompute_ref_log_probs and kind not in ("dpo", "kto"):
            raise ConfigError("precompute_ref_log_probs applies to dpo and kto only")
        if pref.precompute_ref_log_probs and self.rlhf.ref_model:
            raise ConfigError("give either --ref_model or --precompute_ref_log_probs: precomputed log-probs come "
                              "from the model being trained, before its first step")
        if kind == "gkd" and not (self.gkd.teacher_model or self.gkd.teacher_adapters):
            raise ConfigError("gkd distils a teacher: give --teacher_model and/or --teacher_adapters")
        if self.grpo.multi_turn_scheduler and kind != "grpo":
            raise ConfigError("--multi_turn_scheduler applies to grpo")
        for flag in ("streaming", "packing", "padding_free"):
            if getattr(self.data, flag):
                raise ConfigError(f"--{flag} applies to sft and pt only: rlhf batches pairs, labelled samples or "
                                  "prompts as they are; remove it")
