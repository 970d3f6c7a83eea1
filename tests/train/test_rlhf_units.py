"""Fast checks of the rlhf pieces: row layouts, config defaults, rewards, alarms, the rollout prompt check."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest
import torch

from tailorkit.cli import parse
from tailorkit.data.encode import encode_prompt
from tailorkit.data.preference import (EncodedPrompt, check_prompt_matches, load_rows, parse_kto_row,
                                       parse_preference_row, parse_prompt_row)
from tailorkit.errors import ConfigError, DataError
from tailorkit.train.grpo import RewardAlarm, RolloutAlarms, group_advantages
from tailorkit.train.rollout import Sampler, Sampling
from tailorkit.train.rewards import accuracy, build_rewards, make_format, make_soft_overlong

USER = {"role": "user", "content": "What colour is it?"}


def _jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_preference_row_layouts(tmp_path):
    a = parse_preference_row({"messages": [USER, {"role": "assistant", "content": "red"}],
                              "rejected_response": "blue"})
    b = parse_preference_row({"messages": [USER, {"role": "assistant", "content": "red"}],
                              "rejected_messages": [USER, {"role": "assistant", "content": "blue"}]})
    assert a == b
    assert a.chosen.messages[-1]["content"] == "red" and a.rejected.messages[-1]["content"] == "blue"
    assert a.chosen.messages[:-1] == a.rejected.messages[:-1]


def test_preference_row_errors_name_file_line_and_field(tmp_path):
    good = {"messages": [USER, {"role": "assistant", "content": "red"}], "rejected_response": "blue"}
    path = _jsonl(tmp_path, [good, {"messages": good["messages"]}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: rejected_response: .*rejected_messages"):
        load_rows([path], parse_preference_row)
    other_prompt = {"messages": good["messages"], "rejected_messages": [{"role": "user", "content": "Other?"},
                                                                        {"role": "assistant", "content": "blue"}]}
    with pytest.raises(DataError, match=r"x\.jsonl:3: rejected_messages: .*prompt differs from the chosen one"):
        parse_preference_row(other_prompt, source="x.jsonl", line=3)
    with pytest.raises(DataError, match=r"k\.jsonl:1: label: KTO 'label' must be true or false"):
        parse_kto_row({"messages": good["messages"], "label": "yes"}, source="k.jsonl", line=1)
    with pytest.raises(DataError, match=r"k\.jsonl:2: label: KTO rows need a boolean 'label'"):
        parse_kto_row({"messages": good["messages"]}, source="k.jsonl", line=2)


def test_prompt_rows_drop_the_reply_and_keep_columns():
    s = parse_prompt_row({"messages": [USER, {"role": "assistant", "content": "red"}], "solution": "red"})
    assert s.conv.messages[-1]["role"] == "user" and s.columns == {"solution": "red"}
    with pytest.raises(DataError, match="messages"):
        parse_prompt_row({"solution": "red"}, source="p.jsonl", line=4)


def test_rlhf_config_from_ms_swift_flags():
    cfg = parse("rlhf", ["--rlhf_type", "dpo", "--model", "m", "--dataset", "d.jsonl", "--beta", "0.2",
                         "--loss_type", "ipo", "--rpo_alpha", "0.5", "--lora_rank", "32"])
    assert (cfg.rlhf.beta, cfg.rlhf.loss_type, cfg.preference.rpo_alpha, cfg.tuner.lora_rank) == (0.2, "ipo", 0.5, 32)
    simpo = parse("rlhf", ["--rlhf_type", "simpo", "--model", "m", "--dataset", "d.jsonl"])
    assert (simpo.rlhf.beta, simpo.rlhf.loss_type, simpo.preference.cpo_alpha) == (2.0, "simpo", 0.0)
    grpo = parse("rlhf", ["--rlhf_type", "grpo", "--model", "m", "--dataset", "d.jsonl"])
    assert (grpo.rlhf.beta, grpo.rlhf.loss_type) == (0.04, "grpo")
    assert "rlhf_type" in grpo.flat() and grpo.flat()["num_generations"] == 4
    from tailorkit.config.rlhf import RlhfConfig
    from tailorkit.config.loading import build_config
    assert build_config(RlhfConfig, cfg.flat()).flat() == cfg.flat()  # args.yaml feeds back unchanged
    with pytest.raises(ConfigError, match="loss_type 'dapo' does not apply to rlhf_type dpo"):
        parse("rlhf", ["--rlhf_type", "dpo", "--model", "m", "--dataset", "d.jsonl", "--loss_type", "dapo"])
    with pytest.raises(ConfigError, match="num_generations"):
        parse("rlhf", ["--rlhf_type", "grpo", "--model", "m", "--dataset", "d.jsonl", "--num_generations", "1"])
    with pytest.raises(ConfigError, match="one weight per function"):
        parse("rlhf", ["--rlhf_type", "grpo", "--model", "m", "--dataset", "d.jsonl", "--reward_funcs", "accuracy",
                       "--reward_weights", "1", "2"])


def test_builtin_rewards():
    assert accuracy(["red", " <answer>blue</answer>", "green"], solution=["red", "blue", "red"]) == [1.0, 1.0, 0.0]
    with pytest.raises(ConfigError, match="solution"):
        accuracy(["red"])
    fmt = make_format(r"^<think>.*?</think>\s*<answer>.*?</answer>$")
    assert fmt(["<think>hm</think> <answer>red</answer>", "red", "<answer>red</answer>"]) == [1.0, 0.0, 0.0]
    overlong = make_soft_overlong(max_length=8, cache_length=4)
    assert overlong(["", "", "", ""], completion_lengths=[3, 4, 6, 8]) == [0.0, 0.0, -0.5, -1.0]


def test_reward_plugins_and_weights(tmp_path):
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text("def shout(completions, **kw):\n    return [float(c.isupper()) for c in completions]\n"
                      "def _helper():\n    pass\n")
    rewards = build_rewards(["shout", "accuracy"], ["2", "0.5"], [str(plugin)], format_pattern=".*",
                            max_completion_length=8, soft_cache_length=None)
    total, per_func = rewards.score(["RED", "red"], {"solution": ["red", "red"], "completion_lengths": [1, 1]})
    assert per_func == {"shout": [1.0, 0.0], "accuracy": [0.0, 1.0]}
    assert total == [2.0, 0.5]
    with pytest.raises(ConfigError, match="unknown reward function '_helper'"):
        build_rewards(["_helper"], [], [str(plugin)], format_pattern=".*", max_completion_length=8,
                      soft_cache_length=None)
    with pytest.raises(ConfigError, match="at least one --reward_funcs"):
        build_rewards([], [], [], format_pattern=".*", max_completion_length=8, soft_cache_length=None)


def test_group_advantages_are_normalised_per_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0])
    adv = group_advantages(rewards, 4)
    for group in adv.view(2, 4):
        assert group.mean().abs() < 1e-6
        assert group.std().item() == pytest.approx(1.0, abs=1e-3)
    assert torch.allclose(group_advantages(rewards, 4, "none").view(2, 4).sum(1), torch.zeros(2))


def test_alarms_fire_for_constant_rewards_and_kl():
    alarms = RolloutAlarms(constant_steps=3, kl_limit=1.0)
    flat = torch.tensor([1.0, 1.0, 0.0, 0.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            alarms.check(flat, group_advantages(flat, 2), 2, kl=0.1)
        alarms.check(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.ones(4), 2, kl=5.0)
    texts = [str(w.message) for w in caught if issubclass(w.category, RewardAlarm)]
    assert len(texts) == 2
    assert "constant within every group for 3 steps" in texts[0] and "[0.0, 1.0]" in texts[0]
    assert "KL" in texts[1]
    assert alarms.check(torch.tensor([1.0, 0.0]), torch.zeros(2), 2) == [
        "every advantage is zero this step: the policy gets no gradient from the rewards"]


def test_rollout_prompt_must_equal_training_encoding(tiny_text_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_text_dir)
    sample = parse_prompt_row({"messages": [USER]})
    good = encode_prompt(sample.conv, tok).input_ids
    check_prompt_matches(sample, good, "red", tok)  # passes
    with pytest.raises(DataError, match="rollout prompt .* differs from the training encoding"):
        check_prompt_matches(sample, good[1:], "red", tok)

    # A rollout built from a different prompt (here: one token dropped) fails the per-batch assertion.
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))
            self.generation_config = type("G", (), {"eos_token_id": tok.eos_token_id})()

        def generate(self, input_ids, attention_mask, **_):
            return torch.cat([input_ids, torch.full((input_ids.shape[0], 1), tok.eos_token_id)], 1)

    tampered = encode_prompt(sample.conv, tok)
    tampered.input_ids.pop(0)
    sampler = Sampler(tok, Sampling(max_completion_length=4))
    sampler.rollout(Model(), [EncodedPrompt(sample, encode_prompt(sample.conv, tok))], 2)  # the encoded prompt passes
    with pytest.raises(DataError, match="differs from the training encoding"):
        sampler.rollout(Model(), [EncodedPrompt(sample, tampered)], 2)


def test_flat_margin_alarm_when_reference_is_the_policy():
    from tailorkit.train.preference import DpoAlgorithm, ReferenceModel

    class Tiny(torch.nn.Module):
        def __init__(self, seed):
            super().__init__()
            self.emb = torch.nn.Embedding(11, 11)
            torch.nn.init.normal_(self.emb.weight, generator=torch.Generator().manual_seed(seed))

        def forward(self, input_ids, **_):
            return SimpleNamespace(logits=self.emb(input_ids))

    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 5, 6], [1, 2, 7, 8], [1, 2, 9, 10]])  # chosen x2, rejected x2
    labels = ids.clone()
    labels[:, :2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    trainer = SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu"),
                                                          unwrap_model=lambda m: m),
                              current_gradient_accumulation_steps=2)

    def alarms(policy, reference):
        algo = DpoAlgorithm(beta=0.1, loss_type="sigmoid", reference=reference, alarm_steps=3)
        policy.train()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(6):  # 3 optimizer steps of 2 micro-batches
                algo.compute_loss(trainer, policy, batch)
        return [w for w in caught if issubclass(w.category, RewardAlarm)]

    same = Tiny(0)
    flagged = alarms(same, ReferenceModel(Tiny(0)))
    assert len(flagged) == 1 and "identical for 3 steps" in str(flagged[0].message)
    assert alarms(Tiny(0), ReferenceModel(Tiny(1))) == []


def test_rlhf_metrics_reach_the_progress_bar_and_a_second_plot_panel(tmp_path):
    from PIL import Image

    from tailorkit.train.callbacks import ProgressCallback, plot_loss

    rows = [{"step": s, "loss": 0.7 - 0.1 * s, "rewards/margins": 0.2 * s, "rewards/accuracies": 0.5 + 0.1 * s}
            for s in (1, 2, 3)] + [{"step": 3, "eval_loss": 0.5, "eval_reward": 0.25}]
    (tmp_path / "logging.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert Image.open(plot_loss(tmp_path)).size == (600, 650)  # loss panel + the rlhf metrics panel
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "logging.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    assert Image.open(plot_loss(tmp_path / "sft")).size == (600, 400)  # sft: the loss panel only

    bar = ProgressCallback()
    state = SimpleNamespace(is_world_process_zero=True, max_steps=3, global_step=0)
    bar.on_train_begin(None, state, None)
    bar.on_log(None, state, None, logs={"loss": 0.5, "rewards/margins": 0.25, "rewards/accuracies": 0.75,
                                        "reward": 0.4, "kl": 0.01, "teacher_kl": 1.5})
    shown = bar.bar.postfix
    bar.on_train_end(None, state, None)
    for text in ("loss=0.5", "margins=0.25", "accuracies=0.75", "reward=0.4", "kl=0.01", "teacher_kl=1.5"):
        assert text in shown, shown
