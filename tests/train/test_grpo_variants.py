"""GRPO variants: DAPO dynamic sampling, multi-turn rollouts (loss on model turns only), validation, a reward model
as reward, advantage estimators, overlong filtering, clip-higher and rollouts reused over --num_iterations."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tailorkit.cli import parse
from tailorkit.config.train import ModelArgs
from tailorkit.data.encode import IGNORE, encode_prompt
from tailorkit.data.preference import EncodedPrompt, parse_prompt_row
from tailorkit.models.load import load_bundle
from tailorkit.models.value_head import add_value_head
from tailorkit.train.grpo import GrpoAlgorithm, GrpoSettings, advantages_of, clip_fractions, grpo_loss
from tailorkit.train.rewards import RewardSet
from tailorkit.train.rlhf import rlhf
from tailorkit.train.rollout import Sampler, Sampling

COMMON = ["--torch_dtype", "float32", "--save_strategy", "no", "--lr_scheduler_type", "constant", "--weight_decay",
          "0"]


def _prompt(tok, text: str, **columns) -> EncodedPrompt:
    sample = parse_prompt_row({"messages": [{"role": "user", "content": text}], **columns})
    return EncodedPrompt(sample, encode_prompt(sample.conv, tok))


def _trainer(accumulation: int = 1):
    return SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu"), unwrap_model=lambda m: m),
                           args=SimpleNamespace(gradient_accumulation_steps=accumulation),
                           current_gradient_accumulation_steps=accumulation)


@pytest.fixture(scope="module")
def tiny(tiny_text_dir):
    bundle = load_bundle(ModelArgs(model=str(tiny_text_dir), torch_dtype="float32"))
    return bundle.model.train(), bundle.processor


def test_dapo_dynamic_sampling_resamples_flat_groups_and_counts_them(tiny):
    model, tok = tiny
    calls = []

    def crafted(completions, kind, **_):
        """Every group flat at the first scoring; afterwards the 'varies' prompt's groups vary, 'flat' never does."""
        calls.append(list(kind))
        if len(calls) == 1:
            return [0.5] * len(completions)
        return [float(i % 2) if k == "varies" else 0.0 for i, k in enumerate(kind)]

    rewards = RewardSet(["crafted"], [crafted], [1.0])
    settings = GrpoSettings(num_generations=2, max_completion_length=3, beta=0.0, dynamic_sample=True,
                            max_resample_times=3)
    algo = GrpoAlgorithm(Sampler(tok, Sampling(3)), rewards, settings)
    prompts = [_prompt(tok, "Say a colour.", kind="flat"), _prompt(tok, "Say a word.", kind="varies")]
    loss = algo.compute_loss(_trainer(), model, {"prompts": prompts})
    assert loss.requires_grad
    metrics = algo.pop_metrics({"loss": 0.0})
    # attempt 1 samples both groups again ('varies' now varies and replaces its flat group); attempts 2 and 3
    # sample the still-flat group again; it stays flat and is counted as left
    assert metrics["dynamic_sample/resampled_groups"] == 4
    assert metrics["dynamic_sample/flat_groups_left"] == 1
    assert [len(c) for c in calls] == [4, 4, 2, 2]
    assert metrics["reward"] == pytest.approx((0.5 + 0.5 + 0.0 + 1.0) / 4)  # the flat group kept, the other replaced
    assert metrics["frac_reward_zero_std"] == pytest.approx(0.5)

    plain = GrpoAlgorithm(Sampler(tok, Sampling(3)), RewardSet(["c"], [lambda c, **_: [1.0] * len(c)], [1.0]),
                          GrpoSettings(num_generations=2, max_completion_length=3, beta=0.0))
    plain.compute_loss(_trainer(), model, {"prompts": prompts})
    assert not any(k.startswith("dynamic_sample") for k in plain.pop_metrics({"loss": 0.0}))


def _assistant_spans(ids: list[int], tok) -> set[int]:
    """Positions of each assistant reply and its <|im_end|>, found from the template's markers alone."""
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    spans = set()
    for i in range(len(ids) - len(header) + 1):
        if ids[i:i + len(header)] == header:
            j = i + len(header)
            while ids[j] != end:
                j += 1
            spans.update(range(i + len(header), j + 1))
    return spans


def test_multi_turn_rollout_supervises_model_turns_only(tiny):
    model, tok = tiny
    seen = []

    def try_again(messages, **columns):
        seen.append([m["role"] for m in messages])
        return {"role": "user", "content": "Try again, in one word."} if len(messages) == 2 else None

    sampler = Sampler(tok, Sampling(max_completion_length=5), scheduler=try_again)
    rollout = sampler.rollout(model, [_prompt(tok, "Name a colour.", solution="red")], n=2)
    assert seen == [["user", "assistant"]] * 2 + [["user", "assistant", "user", "assistant"]] * 2
    for seq, messages in zip(rollout.sequences, rollout.messages):
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        supervised = {i for i, t in enumerate(seq.labels) if t != IGNORE}
        assert supervised == _assistant_spans(seq.input_ids, tok)  # token level: both model turns, nothing else
        assert len(supervised) >= 2 and all(seq.labels[i] == seq.input_ids[i] for i in supervised)
        user_turn = tok("Try again, in one word.", add_special_tokens=False)["input_ids"]
        start = next(i for i in range(len(seq.input_ids)) if seq.input_ids[i:i + len(user_turn)] == user_turn)
        assert not supervised & set(range(start, start + len(user_turn)))
    assert rollout.stats["turns"] == 2.0
    assert rollout.columns()["messages"] == rollout.messages

    capped = Sampler(tok, Sampling(max_completion_length=5), scheduler=try_again, max_turns=1)
    assert [len(m) for m in capped.rollout(model, [_prompt(tok, "Name a colour.")], n=1).messages] == [2]
    from tailorkit.errors import ConfigError

    bad = Sampler(tok, Sampling(max_completion_length=2), scheduler=lambda messages, **_: "again")
    with pytest.raises(ConfigError, match="must return None .stop. or"):
        bad.rollout(model, [_prompt(tok, "Hi.")], n=1)


SCHEDULER = '''
def try_again(messages, **columns):
    return {"role": "user", "content": "Try again."} if len(messages) < 4 else None


def quarter_ids(completions, completion_ids, **columns):
    return [sum(1 for t in ids if t % 4 == 0) / max(len(ids), 1) for ids in completion_ids]
'''


@pytest.mark.slow
def test_multi_turn_grpo_with_validation_and_a_reward_model(tiny_text_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rm = AutoModelForCausalLM.from_pretrained(tiny_text_dir)
    add_value_head(rm, seed=1)
    rm.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_text_dir).save_pretrained(tmp_path / "rm")
    (tmp_path / "plugin.py").write_text(SCHEDULER)
    rows = [{"messages": [{"role": "user", "content": f"Name a {w}."}]} for w in ("colour", "shape", "fruit", "tree")]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = rlhf(parse("rlhf", COMMON + [
        "--rlhf_type", "grpo", "--model", str(tiny_text_dir), "--dataset", str(tmp_path / "p.jsonl"),
        "--val_dataset", str(tmp_path / "p.jsonl"), "--eval_strategy", "steps", "--eval_steps", "2",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--num_generations", "2",
        "--max_completion_length", "4", "--max_steps", "2", "--logging_steps", "1", "--learning_rate", "1e-2",
        "--external_plugins", str(tmp_path / "plugin.py"), "--multi_turn_scheduler", "try_again",
        "--reward_funcs", "quarter_ids", "--reward_model", str(tmp_path / "rm"), "--reward_weights", "1", "0.1",
        "--output_dir", str(tmp_path / "out")]))
    train = [r for r in result.log_history if "loss" in r]
    assert [r["multi_turn/turns"] for r in train] == [2.0, 2.0]
    assert all("rewards/reward_model" in r and "rewards/quarter_ids" in r for r in train)
    for r in train:
        assert r["reward"] == pytest.approx(r["rewards/quarter_ids"] + 0.1 * r["rewards/reward_model"], abs=1e-5)
    evals = [r for r in result.log_history if "eval_loss" in r]
    assert len(evals) == 1 and "eval_reward" in evals[0] and "eval_rewards/reward_model" in evals[0]
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


def test_advantage_estimators():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0])
    g = 4
    rloo = advantages_of(rewards, g, "rloo", "none")
    others = torch.stack([(rewards.view(-1, g).sum(1).repeat_interleave(g)[i] - rewards[i]) / (g - 1)
                          for i in range(8)])
    torch.testing.assert_close(rloo, rewards - others)  # each reward minus the mean of the other completions
    centred = rewards - rewards.view(-1, g).mean(1).repeat_interleave(g)
    torch.testing.assert_close(advantages_of(rewards, g, "reinforce_plus_plus", "batch"),
                               centred / (centred.std() + 1e-4))
    grpo = advantages_of(rewards, g, "grpo", "group")
    torch.testing.assert_close(grpo.view(-1, g).mean(1), torch.zeros(2), atol=1e-6, rtol=0)
    cfg = parse("rlhf", ["--rlhf_type", "grpo", "--model", "m", "--dataset", "d.jsonl", "--advantage_estimator", "rloo"])
    assert (cfg.grpo.scale_rewards, cfg.grpo.kl_in_reward) == ("none", True)
    assert parse("rlhf", ["--rlhf_type", "grpo", "--model", "m", "--dataset", "d.jsonl"]).grpo.kl_in_reward is False


def test_clip_higher_and_overlong_filter(tiny):
    # clip-higher: a larger upper range clips fewer positive-advantage tokens and moves the loss
    logps = torch.tensor([[-1.0, -1.0, -1.0]])
    old = torch.tensor([[-1.5, -1.1, -1.0]])  # ratios e^0.5, e^0.1, 1
    adv, mask = torch.tensor([1.0]), torch.ones(1, 3)
    ratio = torch.exp(logps - old)
    low = clip_fractions(ratio, adv, mask, 0.2, None)["clip_ratio/high"]
    high = clip_fractions(ratio, adv, mask, 0.2, 0.28)["clip_ratio/high"]
    assert float(low) == pytest.approx(1 / 3) and float(high) == pytest.approx(1 / 3)
    assert float(clip_fractions(ratio, adv, mask, 0.2, 0.7)["clip_ratio/high"]) == 0.0
    assert grpo_loss(logps, old, adv, mask, epsilon_high=0.7)[0] < grpo_loss(logps, old, adv, mask)[0]

    # overlong filtering: completions cut at max_completion_length (no end of sequence) leave the loss
    model, tok = tiny
    settings = GrpoSettings(num_generations=4, max_completion_length=2, beta=0.0, overlong_filter=True)
    scores = RewardSet(["i"], [lambda c, **_: [float(i) for i in range(len(c))]], [1.0])
    algo = GrpoAlgorithm(Sampler(tok, Sampling(2)), scores, settings)
    step = algo._prepare(_trainer(), model, [_prompt(tok, "Say something long."), _prompt(tok, "Say a word.")])
    cut = step.rollout.truncated
    assert any(cut)  # two tokens rarely end a reply of the random model
    assert [bool(row.any()) for row in step.mask] == [not c for c in cut]
    assert (step.batch["labels"][:, 1:] != IGNORE).any(-1).all()  # the batch itself keeps every completion
    assert algo.pop_metrics({"loss": 0.0})["overlong_filtered"] == pytest.approx(sum(cut) / len(cut))


@pytest.mark.slow
def test_rollouts_reused_over_num_iterations_move_the_ratio(tiny_text_dir, tmp_path):
    (tmp_path / "plugin.py").write_text(SCHEDULER)
    rows = [{"messages": [{"role": "user", "content": f"Name a {w}."}]} for w in ("colour", "shape", "fruit", "tree")]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = rlhf(parse("rlhf", COMMON + [
        "--rlhf_type", "grpo", "--model", str(tiny_text_dir), "--dataset", str(tmp_path / "p.jsonl"),
        "--train_type", "full", "--learning_rate", "3e-3", "--beta", "0", "--per_device_train_batch_size", "2",
        "--num_generations", "4", "--max_completion_length", "6", "--max_steps", "4", "--logging_steps", "1",
        "--external_plugins", str(tmp_path / "plugin.py"), "--reward_funcs", "quarter_ids",
        "--num_iterations", "2", "--epsilon_high", "0.28", "--loss_type", "dapo", "--output_dir",
        str(tmp_path / "out")]))
    logs = [r for r in result.log_history if "loss" in r]
    # steps 1 and 3 make rollouts (logged rewards), 2 and 4 train on them again: the ratio is no longer 1
    assert [("reward" in r) for r in logs] == [True, False, True, False]
    print([(r["clip_ratio"], r["clip_ratio/high"], r["clip_ratio/low"]) for r in logs])
    assert all(r["clip_ratio"] == 0 for r in logs[0::2])  # a fresh rollout: ratio 1, nothing clipped
    assert all(r["clip_ratio"] > 0 for r in logs[1::2])  # the second step on it: the ratio moved and clips
    assert all("entropy" in r for r in logs)
