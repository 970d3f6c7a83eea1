"""GRPO and its variants: rollouts of encoder-built prompts, group advantages, the clipped objective.

Each training step samples ``num_generations`` completions per prompt (train/rollout.py), scores them
(train/rewards.py: functions and reward models), optionally samples zero-variance groups again (DAPO's
dynamic sampling), turns rewards into advantages (grpo, RLOO or REINFORCE++) and optimises the clipped
surrogate (token-level ratio: GRPO; sequence-level: GSPO) with an optional KL to the reference.
With ``--num_iterations 1`` generation is on-policy and the "old" log-probs are the current ones detached
(ratio 1, as in TRL); with more, each rollout serves that many optimizer steps and the ratio moves off 1,
where clipping (and DAPO's clip-higher ``--epsilon_high``) acts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..config.rlhf import LOSS_CHOICES
from ..data.encode import IGNORE
from ..data.preference import EncodedPrompt
from .algorithm import Metrics, RolloutReuse, per_step_loss
from .losses import masked_mean, token_entropy, token_log_probs
from .preference import ReferenceModel, RewardAlarm, model_inputs, token_logps
from .rewards import RewardSet, conversations_of
from .rollout import Rollout, Sampler, rollout_batch

GRPO_LOSSES = LOSS_CHOICES["grpo"]
__all__ = ["GRPO_LOSSES", "GrpoAlgorithm", "RewardAlarm", "RolloutAlarms", "advantages_of", "group_advantages",
           "grpo_loss"]


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: str = "group") -> torch.Tensor:
    """(r - mean of its group) / (std + 1e-4); ``scale`` picks the std: group, batch or none (no division)."""
    return advantages_of(rewards, num_generations, "grpo", scale)


def advantages_of(rewards: torch.Tensor, num_generations: int, estimator: str = "grpo",
                  scale: str = "group") -> torch.Tensor:
    """Advantages of grouped rewards (ms-swift's definitions).

    grpo: r - group mean; rloo: r minus the mean of the *other* completions of the group
    (= (r - mean) * G / (G - 1)); reinforce_plus_plus: r - group mean. Then divided by the std of the
    group's (or the batch's) rewards (reinforce_plus_plus: of the centred advantages) unless ``scale`` is none.
    """
    g = num_generations
    grouped = rewards.view(-1, g)
    mean = grouped.mean(dim=1).repeat_interleave(g)
    advantages = rewards - mean
    if estimator == "rloo":
        advantages = advantages * g / (g - 1)
    source = advantages if estimator == "reinforce_plus_plus" else rewards
    if scale == "group":
        std = source.view(-1, g).std(dim=1).repeat_interleave(g)
    elif scale == "batch":
        std = source.std().expand_as(source) if source.numel() > 1 else torch.zeros_like(source)
    else:
        return advantages
    return advantages / (std + 1e-4)


def grpo_loss(per_token_logps, old_per_token_logps, advantages, mask, *, ref_per_token_logps=None, beta: float = 0.0,
              epsilon: float = 0.2, epsilon_high: float | None = None, loss_type: str = "grpo",
              importance_sampling_level: str = "token", max_completion_length: int | None = None):
    """The clipped surrogate loss (+ beta * k3 KL to the reference); returns (loss, per-token KL or None).

    Aggregation: grpo = mean of per-sequence token means; bnpo and dapo = mean over all tokens of the
    batch; dr_grpo = token sum / (sequences * max_completion_length).
    """
    mask = mask.to(per_token_logps.dtype)
    coef_1 = importance_ratio(per_token_logps, old_per_token_logps, mask, importance_sampling_level)
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + (epsilon if epsilon_high is None else epsilon_high))
    adv = advantages.unsqueeze(1)
    per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv)
    kl = None
    if beta != 0.0:
        diff = ref_per_token_logps - per_token_logps
        kl = torch.exp(diff) - diff - 1
        per_token_loss = per_token_loss + beta * kl
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type in ("bnpo", "dapo"):
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    else:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}; choose one of {', '.join(GRPO_LOSSES)}")
    return loss, kl


def importance_ratio(per_token_logps, old_per_token_logps, mask, level: str = "token") -> torch.Tensor:
    """pi / pi_old per token (GRPO) or the per-sequence geometric mean (GSPO, [N, 1])."""
    log_ratio = per_token_logps - old_per_token_logps
    if level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    return torch.exp(log_ratio)


def clip_fractions(ratio, advantages, mask, epsilon: float, epsilon_high: float | None) -> dict[str, torch.Tensor]:
    """Share of completion tokens whose ratio is clipped below (negative advantage) / above (positive)."""
    high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages.unsqueeze(1)
    ratio = ratio.expand_as(mask) if ratio.shape != mask.shape else ratio
    low_clipped = (ratio < 1 - epsilon) & (adv < 0)
    high_clipped = (ratio > 1 + high) & (adv > 0)
    return {"clip_ratio/low": masked_mean(low_clipped.float(), mask), "clip_ratio/high": masked_mean(
        high_clipped.float(), mask), "clip_ratio": masked_mean((low_clipped | high_clipped).float(), mask)}


class RolloutAlarms:
    """Warnings (``RewardAlarm``) for training that cannot learn or is drifting away from the reference."""

    def __init__(self, constant_steps: int = 5, kl_limit: float = 10.0):
        self.constant_steps, self.kl_limit = constant_steps, kl_limit
        self.constant_streak = 0

    def check(self, rewards: torch.Tensor, advantages: torch.Tensor, num_generations: int,
              kl: float | None = None) -> list[str]:
        """Warn about this step; returns the messages (also issued as warnings)."""
        messages = []
        grouped = rewards.view(-1, num_generations)
        constant = bool((grouped.max(dim=1).values == grouped.min(dim=1).values).all())
        self.constant_streak = self.constant_streak + 1 if constant else 0
        if self.constant_streak == self.constant_steps:
            values = sorted({round(v, 4) for v in grouped[:, 0].tolist()})
            messages.append(f"the reward has been constant within every group for {self.constant_steps} steps "
                            f"(values {values[:5]}): GRPO has nothing to learn from; check the reward functions, "
                            "the 'solution' column or raise --temperature / --num_generations")
        if bool((advantages == 0).all()) and not constant:
            messages.append("every advantage is zero this step: the policy gets no gradient from the rewards")
        if kl is not None and kl > self.kl_limit:
            messages.append(f"mean KL to the reference is {kl:.3g} (> kl_alarm {self.kl_limit}): the policy is "
                            "drifting; lower --learning_rate or raise --beta")
        for text in messages:
            warnings.warn(text, RewardAlarm, stacklevel=3)
        return messages


@dataclass(frozen=True)
class GrpoSettings:
    """The objective and advantages of GRPO (config/rlhf.py's GrpoArgs, resolved)."""

    num_generations: int
    max_completion_length: int
    beta: float = 0.04
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: str = "grpo"
    importance_sampling_level: str = "token"
    advantage_estimator: str = "grpo"
    scale_rewards: str = "group"
    kl_in_reward: bool = False
    temperature: float = 1.0
    dynamic_sample: bool = False
    max_resample_times: int = 3
    overlong_filter: bool = False
    num_iterations: int = 1


@dataclass
class GrpoStep:
    """One rollout made ready to train on (kept for ``num_iterations`` optimizer steps)."""

    rollout: Rollout
    batch: dict
    rewards: torch.Tensor
    per_func: dict[str, list[float]]
    ref_logps: torch.Tensor | None
    mask: torch.Tensor
    old_logps: torch.Tensor | None = None
    advantages: torch.Tensor | None = None


class GrpoAlgorithm:
    """Rollout + reward + clipped objective for batches of ``EncodedPrompt`` (prompts encoded once, up front)."""

    def __init__(self, sampler: Sampler, rewards: RewardSet, settings: GrpoSettings, *,
                 reference: ReferenceModel | None = None, alarms: RolloutAlarms | None = None):
        if settings.loss_type not in GRPO_LOSSES:
            raise ValueError(f"unknown GRPO loss_type {settings.loss_type!r}; choose one of {', '.join(GRPO_LOSSES)}")
        self.sampler, self.rewards, self.s = sampler, rewards, settings
        self.reference = reference or ReferenceModel()
        self.alarms = alarms or RolloutAlarms()
        self.reuse = RolloutReuse(settings.num_iterations)
        self.rollout_reuse = settings.num_iterations  # the Trainer repeats each step's batches this many times
        self.metrics = Metrics()

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        samples = inputs["prompts"]
        step, fresh = self.reuse.get(trainer, model, samples, lambda: self._prepare(trainer, model, samples))
        out = model(**model_inputs(step.batch), use_cache=False)
        per_token, _ = token_log_probs(out.logits, step.batch["labels"], self.s.temperature)
        if fresh:
            step.old_logps = per_token.detach()
            step.advantages = self._advantages(step)
        s = self.s
        loss, kl = grpo_loss(per_token, step.old_logps, step.advantages, step.mask, ref_per_token_logps=step.ref_logps,
                             beta=0.0 if s.kl_in_reward else s.beta, epsilon=s.epsilon, epsilon_high=s.epsilon_high,
                             loss_type=s.loss_type, importance_sampling_level=s.importance_sampling_level,
                             max_completion_length=s.max_completion_length)
        self._log(model, step, out.logits, per_token, kl, fresh)
        return per_step_loss(trainer, model, loss, return_outputs)

    def _prepare(self, trainer, model, samples: list[EncodedPrompt]) -> GrpoStep:
        """Rollout, rewards (with dynamic sampling), training batch and reference log-probs of one micro-batch."""
        gen_model = trainer.accelerator.unwrap_model(model)
        device = trainer.accelerator.device
        rollout = self.sampler.rollout(gen_model, samples, self.s.num_generations)
        rewards, per_func = self._score(rollout, device)
        if self.s.dynamic_sample and model.training:
            rollout, rewards, per_func = self._dynamic_sample(gen_model, samples, rollout, rewards, per_func, device)
        batch = rollout_batch(rollout, self.sampler.collate, device)
        mask = batch["labels"][:, 1:] != IGNORE
        if self.s.overlong_filter:
            keep = torch.tensor([not t for t in rollout.truncated], device=device)
            mask = mask & keep.unsqueeze(1)
            self.metrics.add(model, overlong_filtered=1 - keep.float())
        ref = None
        if self.s.beta != 0.0:
            with self.reference.active(trainer, model) as ref_model:
                ref, _ = token_logps(ref_model, batch, temperature=self.s.temperature)
        for key, value in rollout.stats.items():
            self.metrics.add(model, **{f"multi_turn/{key}": value})
        return GrpoStep(rollout, batch, torch.tensor(rewards, dtype=torch.float32, device=device), per_func, ref, mask)

    def _score(self, rollout: Rollout, device) -> tuple[list[float], dict[str, list[float]]]:
        conversations = conversations_of(rollout) if self.rewards.models else None
        return self.rewards.score(rollout.texts, rollout.columns(), conversations, device)

    def _dynamic_sample(self, model, samples, rollout, rewards, per_func, device):
        """DAPO: sample the prompts whose group rewards are all equal again, up to --max_resample_times; a group
        that varies replaces the flat one. Counted: groups resampled, groups still flat after the limit."""
        g = self.s.num_generations
        resampled = 0
        for _ in range(self.s.max_resample_times):
            flat = flat_groups(rewards, g)
            if not flat:
                break
            resampled += len(flat)
            extra = self.sampler.rollout(model, [samples[i] for i in flat], g)
            extra_rewards, extra_per_func = self._score(extra, device)
            for j, i in enumerate(flat):
                if flat_groups(extra_rewards[j * g:(j + 1) * g], g):
                    continue
                rollout = replace_group(rollout, i, extra, j, g)
                rewards[i * g:(i + 1) * g] = extra_rewards[j * g:(j + 1) * g]
                for name in per_func:
                    per_func[name][i * g:(i + 1) * g] = extra_per_func[name][j * g:(j + 1) * g]
        self.metrics.add(model, **{"dynamic_sample/resampled_groups": resampled,
                                   "dynamic_sample/flat_groups_left": len(flat_groups(rewards, g))})
        return rollout, rewards, per_func

    def _advantages(self, step: GrpoStep) -> torch.Tensor:
        rewards = step.rewards
        if self.s.kl_in_reward and step.ref_logps is not None:  # the sequence's KL to the reference, k1
            rewards = rewards - self.s.beta * ((step.old_logps - step.ref_logps) * step.mask).sum(-1)
        return advantages_of(rewards, self.s.num_generations, self.s.advantage_estimator, self.s.scale_rewards)

    def _log(self, model, step: GrpoStep, logits, per_token, kl, fresh: bool) -> None:
        s, mask = self.s, step.mask
        ratio = importance_ratio(per_token.detach(), step.old_logps, mask.to(per_token.dtype),
                                 s.importance_sampling_level)
        mean_kl = None
        if step.ref_logps is not None:
            diff = step.ref_logps - per_token.detach()
            mean_kl = float(masked_mean(torch.exp(diff) - diff - 1, mask))
        grouped = step.rewards.view(-1, s.num_generations)
        values = {**clip_fractions(ratio, step.advantages, mask, s.epsilon, s.epsilon_high),
                  "entropy": masked_mean(token_entropy(logits.detach(), s.temperature), mask),
                  **({"kl": mean_kl} if mean_kl is not None else {})}
        if fresh:  # the rollout's own numbers, once per rollout
            values.update(reward=step.rewards, reward_std=grouped.std(dim=1),
                          frac_reward_zero_std=(grouped.std(dim=1) == 0).float(),
                          completion_length=(step.batch["labels"][:, 1:] != IGNORE).sum(-1).float(),
                          **{f"rewards/{name}": torch.tensor(v) for name, v in step.per_func.items()})
            if model.training:
                self.alarms.check(step.rewards, step.advantages, s.num_generations, mean_kl)
        self.metrics.add(model, **values)

    def pop_metrics(self, logs: dict) -> dict:
        return self.metrics.pop(logs)


def flat_groups(rewards, num_generations: int) -> list[int]:
    """Indices of the groups whose rewards are all equal."""
    values = list(rewards)
    return [i for i in range(len(values) // num_generations)
            if len(set(values[i * num_generations:(i + 1) * num_generations])) == 1]


def replace_group(rollout: Rollout, i: int, extra: Rollout, j: int, g: int) -> Rollout:
    """``rollout`` with its group ``i`` replaced by group ``j`` of ``extra`` (``g`` completions per group)."""
    order = list(range(len(rollout.samples)))
    merged = [(rollout, k) for k in order]
    merged[i * g:(i + 1) * g] = [(extra, k) for k in range(j * g, (j + 1) * g)]
    pick = lambda name: [getattr(src, name)[k] for src, k in merged]  # noqa: E731
    messages = None if rollout.messages is None else pick("messages")
    return Rollout(pick("samples"), pick("sequences"), pick("texts"), pick("completion_ids"), pick("truncated"),
                   messages, dict(rollout.stats))
