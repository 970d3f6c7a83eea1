"""PPO: a policy and a value head, rewards from reward functions and/or reward models, GAE, clipped objectives.

Each rollout samples one completion per prompt (train/rollout.py) and scores it; the per-token reward is
minus ``kl_coef`` times the KL to the reference on every completion token, plus the score on its last
token. GAE turns rewards and the value head's predictions into advantages (whitened) and returns; the loss
is the clipped policy surrogate plus ``vf_coef`` times the clipped value loss, as in TRL's PPOTrainer (the
loss terms are tested equal to TRL's code on identical inputs). Each rollout serves ``--num_ppo_epochs``
optimizer steps (the ratio and the value clipping act from the second one).

The value head (models/value_head.py) reads the policy's own last hidden state (shared backbone, trained
with the policy), or with ``--value_model`` the hidden state of a separate frozen backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.encode import IGNORE
from ..data.preference import EncodedPrompt
from ..errors import ConfigError
from ..models.load import ModelBundle
from ..models.value_head import last_hidden, token_values, value_head_of
from .algorithm import Metrics, RolloutReuse, per_step_loss
from .losses import masked_mean, token_entropy, token_log_probs
from .preference import ReferenceModel, model_inputs, token_logps
from .rewards import RewardSet, conversations_of
from .rollout import Sampler, rollout_batch


# ---- loss terms (TRL's PPOTrainer, written as functions) ----------------------------------------------------

def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate of the policy to the reference: k1 = log-ratio, k3 = (r - 1) - log r."""
    logr = ref_logprobs - logprobs
    return -logr if estimator == "k1" else (logr.exp() - 1) - logr


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, end_index: torch.Tensor) -> torch.Tensor:
    """-kl_coef * kl at every position, plus each sequence's score at ``end_index``."""
    rewards = -kl_coef * kl
    rewards[torch.arange(rewards.size(0), device=rewards.device), end_index] += scores
    return rewards


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / std over the masked entries (unbiased variance); ``shift_mean=False`` keeps the mean."""
    mask = mask.to(values.dtype)
    count = mask.sum()
    if count < 2:
        raise ConfigError("whitening needs at least two completion tokens in a micro-batch; raise "
                          "--per_device_train_batch_size or --max_completion_length")
    mean = (values * mask).sum() / count
    var = (((values - mean) ** 2) * mask).sum() / count * count / (count - 1)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """Generalised advantage estimates over the last dimension (the value after the last position is 0)."""
    last = torch.zeros_like(rewards[:, 0])
    out = []
    width = rewards.shape[1]
    for t in reversed(range(width)):
        next_values = values[:, t + 1] if t < width - 1 else 0.0
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        out.append(last)
    return torch.stack(out[::-1], dim=1)


def ppo_loss(logprobs, old_logprobs, advantages, values, old_values, returns, mask, value_mask, *,
             cliprange: float, cliprange_value: float, vf_coef: float):
    """(pg_loss + vf_coef * vf_loss, its terms and clip fractions) over the masked tokens."""
    vclipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    vf_losses1, vf_losses2 = (values - returns) ** 2, (vclipped - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), value_mask)
    ratio = torch.exp(logprobs - old_logprobs)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)
    with torch.no_grad():
        stats = {"pg_loss": pg_loss.detach(), "vf_loss": vf_loss.detach(),
                 "clip_ratio": masked_mean((pg_losses2 > pg_losses).float(), mask),
                 "vf_clip_ratio": masked_mean((vf_losses2 > vf_losses1).float(), value_mask),
                 "approx_kl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)}
    return pg_loss + vf_coef * vf_loss, stats


def ppo_advantages(scores, logps, ref_logps, values, mask, *, kl_coef: float, kl_estimator: str = "k1",
                   whiten_rewards: bool = False, gamma: float = 1.0, lam: float = 0.95):
    """(whitened GAE advantages, returns, per-token KL) of completions marked by ``mask`` [N, T].

    The score lands on each completion's last token; ``values`` are 0 off the mask. GAE runs over the
    columns that hold completion tokens only (the prompt columns before them carry nothing).
    """
    kl = kl_penalty(logps, ref_logps, kl_estimator) * mask
    end = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)
    rewards = token_rewards(scores, kl, kl_coef, end) * mask
    if whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
    columns = mask.any(0).nonzero().flatten()
    first, last = int(columns[0]), int(columns[-1]) + 1
    advantages = torch.zeros_like(rewards)
    advantages[:, first:last] = gae(rewards[:, first:last], values[:, first:last], gamma, lam)
    returns = advantages + values
    return masked_whiten(advantages, mask) * mask, returns, kl


# ---- the algorithm -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PpoSettings:
    """config/rlhf.py's PpoArgs plus the sampling temperature."""

    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = None
    num_ppo_epochs: int = 1
    temperature: float = 1.0


class Critic:
    """Where values come from: the policy's own hidden states (``bundle`` None) or a separate frozen backbone."""

    def __init__(self, bundle: ModelBundle | None = None, policy_tokenizer=None):
        self.model = None if bundle is None else bundle.model.eval().requires_grad_(False)
        if bundle is not None and policy_tokenizer is not None and \
                bundle.tokenizer.get_vocab() != policy_tokenizer.get_vocab():
            raise ConfigError("--value_model must share the policy's tokenizer (it reads the same token ids)")

    def values(self, trainer, model, batch: dict, hidden: torch.Tensor | None) -> torch.Tensor:
        """The value head at every position [N, T] (its gradient reaches the head, and a shared backbone)."""
        if self.model is not None:
            device = trainer.accelerator.device
            if next(self.model.parameters()).device != device:
                self.model.to(device)
            with torch.no_grad():
                _, hidden = last_hidden(self.model, model_inputs(batch))
        return token_values(value_head_of(trainer.accelerator.unwrap_model(model)), hidden)


@dataclass
class PpoStep:
    """One rollout made ready to train on (kept for ``num_ppo_epochs`` optimizer steps)."""

    batch: dict
    mask: torch.Tensor  # completion tokens [N, T-1]
    scores: torch.Tensor
    per_func: dict[str, list[float]]
    ref_logps: torch.Tensor | None
    old_logps: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None


class PpoAlgorithm:
    """Rollout, reward, GAE and the clipped policy and value losses for batches of ``EncodedPrompt``."""

    def __init__(self, sampler: Sampler, rewards: RewardSet, settings: PpoSettings, *, critic: Critic,
                 reference: ReferenceModel | None = None):
        self.sampler, self.rewards, self.s, self.critic = sampler, rewards, settings, critic
        self.reference = reference or ReferenceModel()
        self.reuse = RolloutReuse(settings.num_ppo_epochs)
        self.rollout_reuse = settings.num_ppo_epochs  # the Trainer repeats each step's batches this many times
        self.metrics = Metrics()

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None):
        samples = inputs["prompts"]
        step, fresh = self.reuse.get(trainer, model, samples, lambda: self._prepare(trainer, model, samples))
        shared = self.critic.model is None
        out = model(**model_inputs(step.batch), use_cache=False, output_hidden_states=shared)
        logps, _ = token_log_probs(out.logits, step.batch["labels"], self.s.temperature)
        values = self.critic.values(trainer, model, step.batch, out.hidden_states[-1] if shared else None)[:, :-1]
        if fresh:
            self._advantages(model, step, logps.detach(), values.detach())
        s = self.s
        loss, stats = ppo_loss(logps, step.old_logps, step.advantages, values, step.old_values, step.returns,
                               step.mask, step.mask, cliprange=s.cliprange, cliprange_value=s.cliprange_value,
                               vf_coef=s.vf_coef)
        self._log(model, step, out.logits, stats, fresh)
        return per_step_loss(trainer, model, loss, return_outputs)

    def _prepare(self, trainer, model, samples: list[EncodedPrompt]) -> PpoStep:
        device = trainer.accelerator.device
        rollout = self.sampler.rollout(trainer.accelerator.unwrap_model(model), samples, 1)
        conversations = conversations_of(rollout) if self.rewards.models else None
        total, per_func = self.rewards.score(rollout.texts, rollout.columns(), conversations, device)
        scores = torch.tensor(total, dtype=torch.float32, device=device)
        if self.s.missing_eos_penalty is not None:
            scores = scores - self.s.missing_eos_penalty * torch.tensor(rollout.truncated, device=device).float()
        batch = rollout_batch(rollout, self.sampler.collate, device)
        ref = None
        if self.s.kl_coef != 0.0:
            with self.reference.active(trainer, model) as ref_model:
                ref, _ = token_logps(ref_model, batch, temperature=self.s.temperature)
        return PpoStep(batch, batch["labels"][:, 1:] != IGNORE, scores, per_func, ref)

    def _advantages(self, model, step: PpoStep, logps: torch.Tensor, values: torch.Tensor) -> None:
        """Old log-probs and values of the rollout, then its advantages and returns."""
        s, mask = self.s, step.mask
        step.old_logps, step.old_values = logps, values * mask
        ref = step.ref_logps if step.ref_logps is not None else logps
        step.advantages, step.returns, kl = ppo_advantages(
            step.scores, logps, ref, step.old_values, mask, kl_coef=s.kl_coef, kl_estimator=s.kl_estimator,
            whiten_rewards=s.whiten_rewards, gamma=s.gamma, lam=s.lam)
        self.metrics.add(model, kl=kl.sum(-1), non_score_reward=(-s.kl_coef * kl).sum(-1))

    def _log(self, model, step: PpoStep, logits, stats: dict, fresh: bool) -> None:
        values = {**stats, "entropy": masked_mean(token_entropy(logits.detach(), self.s.temperature), step.mask)}
        if fresh:
            values.update(reward=step.scores, reward_std=step.scores.std() if step.scores.numel() > 1 else 0.0,
                          completion_length=step.mask.sum(-1).float(),
                          **{f"rewards/{name}": torch.tensor(v) for name, v in step.per_func.items()})
        self.metrics.add(model, **values)

    def pop_metrics(self, logs: dict) -> dict:
        return self.metrics.pop(logs)
