"""Our preference / GRPO losses equal TRL's implementations on identical log-probabilities.

TRL is a test-only dependency. Its loss code lives in trainer methods, so each test calls the method
on a minimal stand-in for the trainer (the attributes the method reads) and a stand-in model that
returns fixed log-probabilities; our algorithms get logits whose log-softmax gives exactly those.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tailorkit.data.encode import IGNORE
from tailorkit.train.grpo import grpo_loss
from tailorkit.train.preference import (DpoAlgorithm, KtoAlgorithm, ReferenceFreeAlgorithm, RewardModelAlgorithm)

trl = pytest.importorskip("trl", reason="TRL is the reference implementation for the parity tests")

V, T = 13, 9


class _Accel:
    device = torch.device("cpu")
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _trl_self(**attrs):
    base = dict(model=SimpleNamespace(training=True), accelerator=_Accel(), aux_loss_enabled=False,
                _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
                label_smoothing=0.0, current_gradient_accumulation_steps=1)
    base.update(attrs)
    return SimpleNamespace(**base)


def _ours_trainer():
    return SimpleNamespace(accelerator=_Accel(), current_gradient_accumulation_steps=1)


def _sequences(n: int, seed: int):
    """Random logits, token ids and labels (prompt masked, replies of varying length, right padding)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, T, V, generator=g) * 2
    ids = torch.randint(V, (n, T), generator=g)
    labels = torch.full((n, T), IGNORE)
    attention = torch.zeros(n, T, dtype=torch.long)
    for i in range(n):
        start = int(torch.randint(2, 4, (1,), generator=g))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=g))
        labels[i, start:end] = ids[i, start:end]
        attention[i, :end] = 1
    return logits, ids, labels, attention


def _per_token(logits, ids, labels):
    """Reference per-token log-probs, written independently of tailorkit: 0 off the replies."""
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return lp * (labels[:, 1:] != IGNORE)


class _LogitsModel(torch.nn.Module):
    def __init__(self, by_ids: dict):
        super().__init__()
        self.by_ids = by_ids
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, **_):
        return SimpleNamespace(logits=self.by_ids[id(input_ids)])


def _trl_outputs(log_probs):
    zeros = torch.zeros_like(log_probs)
    return SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


@pytest.mark.parametrize("loss_type,rpo_alpha,label_smoothing", [
    ("sigmoid", None, 0.0), ("ipo", None, 0.0), ("hinge", None, 0.0), ("robust", None, 0.2), ("sigmoid", 0.5, 0.0)])
def test_dpo_matches_trl(loss_type, rpo_alpha, label_smoothing):
    from trl.trainer.dpo_trainer import DPOTrainer

    n, beta = 3, 0.3
    logits, ids, labels, attention = _sequences(2 * n, seed=1)
    ref = torch.randn(2 * n, generator=torch.Generator().manual_seed(2)) * 3 - 10
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels,
             "ref_chosen_logps": ref[:n], "ref_rejected_logps": ref[n:]}
    ours = DpoAlgorithm(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, rpo_alpha=rpo_alpha)
    model = _LogitsModel({id(ids): logits})
    our_loss = ours.compute_loss(_ours_trainer(), model, batch)

    types, weights = [loss_type], [1.0]
    if rpo_alpha:
        types, weights = [loss_type, "sft"], [1.0, rpo_alpha]
    fake = _trl_self(beta=beta, loss_types=types, loss_weights=weights, label_smoothing=label_smoothing, ld_alpha=None,
                     precompute_ref_logps=True, f_divergence_type="reverse_kl", use_weighting=False)
    per_token = _per_token(logits, ids, labels)
    trl_inputs = {"input_ids": ids, "attention_mask": attention, "completion_mask": (labels != IGNORE).long(),
                  "ref_chosen_logps": ref[:n], "ref_rejected_logps": ref[n:]}
    trl_loss = DPOTrainer._compute_loss(fake, lambda **_: _trl_outputs(per_token), trl_inputs, False)
    torch.testing.assert_close(our_loss, trl_loss, rtol=1e-5, atol=1e-6)


def _trl_batch_logps(logits, labels, average):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    return CPOTrainer.get_batch_logps(logits, labels, average_log_prob=average)


def _trl_nll(logits, labels, n):
    return torch.nn.functional.cross_entropy(logits[:n, :-1].reshape(-1, V), labels[:n, 1:].reshape(-1))


def test_orpo_matches_trl():
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    n, beta = 3, 0.25
    logits, ids, labels, attention = _sequences(2 * n, seed=3)
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    our_loss = ReferenceFreeAlgorithm("orpo", beta=beta).compute_loss(_ours_trainer(), _LogitsModel({id(ids): logits}),
                                                                     batch)
    avg = _trl_batch_logps(logits, labels, True)
    losses, *_ = ORPOTrainer.odds_ratio_loss(_trl_self(beta=beta), avg[:n], avg[n:])
    torch.testing.assert_close(our_loss, _trl_nll(logits, labels, n) - losses.mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,loss_type,cpo_alpha,label_smoothing", [
    ("cpo", "sigmoid", 1.0, 0.0), ("cpo", "hinge", 0.5, 0.0), ("cpo", "ipo", 1.0, 0.0), ("cpo", "sigmoid", 1.0, 0.1),
    ("simpo", "simpo", 0.0, 0.0), ("simpo", "simpo", 0.3, 0.1)])
def test_cpo_and_simpo_match_trl(kind, loss_type, cpo_alpha, label_smoothing):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    n, beta, gamma = 3, 2.0, 0.7
    logits, ids, labels, attention = _sequences(2 * n, seed=4)
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    algo = ReferenceFreeAlgorithm(kind, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                                  simpo_gamma=gamma, cpo_alpha=cpo_alpha)
    our_loss = algo.compute_loss(_ours_trainer(), _LogitsModel({id(ids): logits}), batch)
    logps = _trl_batch_logps(logits, labels, loss_type in ("ipo", "simpo"))
    fake = _trl_self(beta=beta, loss_type=loss_type, alpha=0.0, simpo_gamma=gamma, label_smoothing=label_smoothing)
    losses, *_ = CPOTrainer.cpo_loss(fake, logps[:n], logps[n:])
    expected = losses.mean() + cpo_alpha * _trl_nll(logits, labels, n)
    torch.testing.assert_close(our_loss, expected, rtol=1e-5, atol=1e-6)


def test_kto_matches_trl_on_unpaired_batch():
    from trl.trainer.kto_trainer import KTOTrainer

    n, beta = 5, 0.2
    logits, ids, labels, attention = _sequences(n, seed=5)
    kl_logits, kl_ids, kl_labels, kl_attention = _sequences(n, seed=6)
    label = torch.tensor([True, False, True, True, False])
    g = torch.Generator().manual_seed(7)
    ref, ref_kl = torch.randn(n, generator=g) - 12, torch.randn(n, generator=g) - 14
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels, "kl_input_ids": kl_ids,
             "kl_attention_mask": kl_attention, "kl_labels": kl_labels, "label": label, "ref_logps": ref,
             "ref_kl_logps": ref_kl}
    algo = KtoAlgorithm(beta=beta, desirable_weight=1.3, undesirable_weight=0.7)
    our_loss = algo.compute_loss(_ours_trainer(), _LogitsModel({id(ids): logits, id(kl_ids): kl_logits}), batch)

    outputs = {id(ids): _trl_outputs(_per_token(logits, ids, labels)),
               id(kl_ids): _trl_outputs(_per_token(kl_logits, kl_ids, kl_labels))}
    fake = _trl_self(beta=beta, calculate_KL=True, precompute_ref_logps=True, loss_type="kto", desirable_weight=1.3,
                     undesirable_weight=0.7)
    fake._compute_kl_logps = lambda model, b: KTOTrainer._compute_kl_logps(fake, model, b)
    trl_inputs = {"input_ids": ids, "attention_mask": attention, "completion_mask": (labels != IGNORE).long(),
                  "KL_input_ids": kl_ids, "KL_attention_mask": kl_attention,
                  "KL_completion_mask": (kl_labels != IGNORE).long(), "label": label, "ref_logps": ref,
                  "ref_KL_logps": ref_kl}
    trl_loss = KTOTrainer._compute_loss(fake, lambda input_ids, **_: outputs[id(input_ids)], trl_inputs, False)
    trl_loss = trl_loss[0] if isinstance(trl_loss, tuple) else trl_loss
    torch.testing.assert_close(our_loss, trl_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("center,margin", [(None, None), (0.01, None), (None, [0.5, 0.0, 1.0, 0.2])])
def test_reward_model_loss_matches_trl(center, margin):
    """Our value head scores each sequence at its last attended token; TRL's RewardTrainer gets those scores as
    a sequence-classification model's logits."""
    from trl.trainer.reward_trainer import RewardTrainer

    g = torch.Generator().manual_seed(8)
    hidden = torch.randn(8, 5, 6, generator=g)
    attention = torch.ones(8, 5, dtype=torch.long)
    for row, width in enumerate([5, 3, 4, 2, 5, 1, 3, 4]):
        attention[row, width:] = 0  # right padding of varying width
    ids = torch.zeros(8, 5, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": attention, "labels": ids}
    if margin is not None:
        batch["margin"] = torch.tensor(margin)

    class ValueModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.v_head = torch.nn.Linear(6, 1, bias=False)
            self.v_head.weight.data = torch.randn(1, 6, generator=g)

        def forward(self, **_):
            return SimpleNamespace(logits=None, hidden_states=(hidden,))

    model = ValueModel()
    our_loss = RewardModelAlgorithm(center_rewards_coefficient=center).compute_loss(_ours_trainer(), model, batch)
    last = attention.sum(-1) - 1  # written independently of tailorkit: the last attended token of each row
    scores = (hidden[torch.arange(8), last] @ model.v_head.weight.T).detach()
    fake = _trl_self(args=SimpleNamespace(center_rewards_coefficient=center))
    trl_inputs = {"input_ids": ids, "attention_mask": attention, **({"margin": batch["margin"]} if margin else {})}
    trl_loss = RewardTrainer.compute_loss(fake, lambda **_: SimpleNamespace(logits=scores), trl_inputs)
    torch.testing.assert_close(our_loss, trl_loss, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("loss_type,level,beta", [
    ("grpo", "token", 0.0), ("grpo", "token", 0.04), ("bnpo", "token", 0.04), ("dr_grpo", "token", 0.04),
    ("dapo", "token", 0.0), ("grpo", "sequence", 0.04)])
def test_grpo_loss_matches_trl(loss_type, level, beta):
    from trl.trainer.grpo_trainer import GRPOTrainer

    b, t, max_len, eps, eps_high = 6, 7, 10, 0.2, 0.28
    g = torch.Generator().manual_seed(9)
    logps = torch.randn(b, t, generator=g) * 0.5 - 2
    old = logps + torch.randn(b, t, generator=g) * 0.3  # ratios away from 1 so that clipping is exercised
    ref = logps + torch.randn(b, t, generator=g) * 0.3
    mask = (torch.arange(t)[None] < torch.randint(2, t + 1, (b, 1), generator=g)).long()
    advantages = torch.randn(b, generator=g)

    ours, _ = grpo_loss(logps, old, advantages, mask, ref_per_token_logps=ref, beta=beta, epsilon=eps,
                        epsilon_high=eps_high, loss_type=loss_type, importance_sampling_level=level,
                        max_completion_length=max_len)
    fake = _trl_self(
        beta=beta, loss_type=loss_type, importance_sampling_level=level, epsilon_low=eps, epsilon_high=eps_high,
        max_completion_length=max_len, top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
        vllm_importance_sampling_correction=False, _entropy_bonus_enabled=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None))
    inputs = {"prompt_ids": torch.zeros(b, 2, dtype=torch.long), "prompt_mask": torch.ones(b, 2, dtype=torch.long),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    theirs = GRPOTrainer._compute_loss(fake, None, inputs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def _ppo_inputs(n: int, width: int, seed: int, lengths: list[int]):
    g = torch.Generator().manual_seed(seed)
    logprobs = torch.randn(n, width, generator=g) * 0.5 - 2
    return dict(responses=torch.zeros(n, width, dtype=torch.long), logprobs=logprobs,
                ref_logprobs=logprobs + torch.randn(n, width, generator=g) * 0.3,
                values=torch.randn(n, width, generator=g), scores=torch.randn(n, generator=g) * 2,
                sequence_lengths=torch.tensor(lengths),
                new_logprobs=logprobs + torch.randn(n, width, generator=g) * 0.3,  # ratios away from 1: clipping acts
                vpred_temp=torch.randn(n, width, 1, generator=g))


@pytest.mark.parametrize("kl_estimator,whiten_rewards", [("k1", False), ("k3", False), ("k1", True)])
def test_ppo_loss_matches_trl_on_full_width_completions(kl_estimator, whiten_rewards):
    """Completions filling the whole width (TRL's score position and masks are then ours): our advantages, returns
    and loss equal TRL's PPOTrainer code (tests/train/trl_ppo_reference.py, TRL 1.16 no longer ships PPO)."""
    from trl_ppo_reference import trl_ppo_loss

    from tailorkit.train.ppo import ppo_advantages, ppo_loss

    n, width = 5, 7
    x = _ppo_inputs(n, width, seed=11, lengths=[width - 1] * n)
    args = SimpleNamespace(kl_estimator=kl_estimator, kl_coef=0.05, whiten_rewards=whiten_rewards, gamma=0.99,
                           lam=0.95, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    theirs = trl_ppo_loss(**x, args=args)
    mask = torch.ones(n, width, dtype=torch.bool)
    advantages, returns, _ = ppo_advantages(x["scores"], x["logprobs"], x["ref_logprobs"], x["values"], mask,
                                            kl_coef=0.05, kl_estimator=kl_estimator, whiten_rewards=whiten_rewards,
                                            gamma=0.99, lam=0.95)
    torch.testing.assert_close(advantages, theirs["advantages"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(returns, theirs["returns"], rtol=1e-5, atol=1e-6)
    loss, stats = ppo_loss(x["new_logprobs"], x["logprobs"], advantages, x["vpred_temp"].squeeze(-1), x["values"],
                           returns, mask, mask, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1)
    torch.testing.assert_close(loss, theirs["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["vf_clip_ratio"], theirs["vf_clipfrac"], rtol=1e-5, atol=1e-6)
    assert 0 < float(stats["clip_ratio"]) < 1  # the clipped branch is exercised


def test_ppo_loss_terms_match_trl_on_padded_completions():
    """Padded completions, term by term: TRL's KL rewards (score one past the end, its p1 masks), GAE, whitening,
    clipped value and policy losses, given TRL's masks, equal ours."""
    from trl_ppo_reference import trl_ppo_loss

    from tailorkit.train.ppo import gae, kl_penalty, masked_whiten, ppo_loss, token_rewards

    n, width = 4, 8
    x = _ppo_inputs(n, width, seed=12, lengths=[7, 3, 5, 6])
    args = SimpleNamespace(kl_estimator="k3", kl_coef=0.1, whiten_rewards=True, gamma=1.0, lam=0.9, cliprange=0.2,
                           cliprange_value=0.3, vf_coef=0.2)
    theirs = trl_ppo_loss(**x, args=args)
    mask, value_mask = ~theirs["padding_mask"], ~theirs["padding_mask_p1"]
    kl = kl_penalty(x["logprobs"], x["ref_logprobs"], "k3") * mask
    rewards = token_rewards(x["scores"], kl, 0.1, theirs["actual_end"])
    rewards = masked_whiten(rewards, value_mask, shift_mean=False) * value_mask
    torch.testing.assert_close(rewards, theirs["rewards"], rtol=1e-5, atol=1e-6)
    values = x["values"] * value_mask
    advantages = gae(rewards, values, 1.0, 0.9)
    returns = advantages + values
    advantages = masked_whiten(advantages, mask) * mask
    torch.testing.assert_close(advantages, theirs["advantages"], rtol=1e-5, atol=1e-6)
    loss, _ = ppo_loss(x["new_logprobs"], x["logprobs"], advantages, x["vpred_temp"].squeeze(-1) * value_mask, values,
                       returns, mask, value_mask, cliprange=0.2, cliprange_value=0.3, vf_coef=0.2)
    torch.testing.assert_close(loss, theirs["loss"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta,temperature", [(0.5, 1.0), (0.0, 1.0), (1.0, 1.0), (0.3, 0.9)])
def test_gkd_loss_matches_trl(beta, temperature):
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    from tailorkit.train.gkd import gkd_loss

    student, ids, labels, _ = _sequences(4, seed=13)
    teacher = torch.randn(student.shape, generator=torch.Generator().manual_seed(14)) * 3
    ours = gkd_loss(student, teacher, labels, beta=beta, temperature=temperature)
    # TRL's compute_loss shifts logits and labels by one, then calls the loss (its own test of the shift)
    theirs = GKDTrainer.generalized_jsd_loss(student[:, :-1], teacher[:, :-1], labels=labels[:, 1:], beta=beta,
                                             temperature=temperature)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_gkd_top_k_teacher_logits():
    """k = vocabulary gives the full loss; a small k renormalises both distributions over the teacher's top k."""
    from tailorkit.train.gkd import gkd_loss

    student, ids, labels, _ = _sequences(3, seed=15)
    teacher = torch.randn(student.shape, generator=torch.Generator().manual_seed(16)) * 3
    full = gkd_loss(student, teacher, labels, beta=0.5)
    torch.testing.assert_close(gkd_loss(student, teacher, labels, beta=0.5, top_k=V), full)
    k = 4
    mask = labels[:, 1:] != IGNORE
    s, t = student[:, :-1][mask], teacher[:, :-1][mask]
    top = t.topk(k, dim=-1).indices
    s_k, t_k = torch.log_softmax(s.gather(-1, top), -1), torch.log_softmax(t.gather(-1, top), -1)
    m = torch.logsumexp(torch.stack([s_k + torch.log(torch.tensor(0.5)), t_k + torch.log(torch.tensor(0.5))]), 0)
    expected = (0.5 * (t_k.exp() * (t_k - m)).sum(-1) + 0.5 * (s_k.exp() * (s_k - m)).sum(-1)).mean()
    torch.testing.assert_close(gkd_loss(student, teacher, labels, beta=0.5, top_k=k), expected)
    assert not torch.allclose(gkd_loss(student, teacher, labels, beta=0.5, top_k=k), full)
