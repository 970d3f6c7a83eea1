"""`rlhf --rlhf_type ppo`: the mean reward rises on a rule reward; a separate value model and a reward model; rollouts
reused for --num_ppo_epochs steps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tailorkit.cli import parse
from tailorkit.data.collate import Collator
from tailorkit.data.encode import encode
from tailorkit.data.formats import parse_row
from tailorkit.models.value_head import add_value_head, has_value_head, load_reward_model, sequence_scores
from tailorkit.train.algorithm import RolloutReuse
from tailorkit.train.rlhf import rlhf
from tailorkit.train.trainer import RepeatSteps

WORDS = ["red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "triangle", "star", "cat", "dog"]
COMMON = ["--torch_dtype", "float32", "--save_strategy", "no", "--lr_scheduler_type", "constant", "--weight_decay",
          "0"]
PLUGIN = '''
def quarter_ids(completions, completion_ids, **columns):
    """Share of completion tokens whose id is a multiple of 4 (a fixed, verifiable target set)."""
    return [sum(1 for t in ids if t % 4 == 0) / max(len(ids), 1) for ids in completion_ids]
'''


def _prompts(folder: Path) -> list[str]:
    rows = [{"messages": [{"role": "user", "content": f"Answer with one word. What colour is the {w}?"}],
             "solution": "red"} for w in WORDS]
    (folder / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "my_rewards.py").write_text(PLUGIN)
    return ["--dataset", str(folder / "prompts.jsonl"), "--external_plugins", str(folder / "my_rewards.py")]


def _logs(result, key):
    return [r[key] for r in result.log_history if key in r]


@pytest.mark.slow
def test_ppo_text_mean_reward_rises(tiny_text_dir, tmp_path):
    result = rlhf(parse("rlhf", COMMON + _prompts(tmp_path) + [
        "--rlhf_type", "ppo", "--model", str(tiny_text_dir), "--train_type", "full", "--learning_rate", "3e-3",
        "--per_device_train_batch_size", "8", "--max_completion_length", "8", "--max_steps", "30",
        "--logging_steps", "5", "--reward_funcs", "quarter_ids", "--kl_coef", "0.001", "--num_ppo_epochs", "2",
        "--output_dir", str(tmp_path / "out")]))
    rewards = _logs(result, "reward")
    print(f"ppo mean reward every 5 steps: {[round(r, 3) for r in rewards]}")
    assert len(rewards) == 6 and rewards[-1] > rewards[0] + 0.3 and rewards[-1] >= 0.8, rewards
    for key in ("kl", "entropy", "clip_ratio", "vf_loss", "pg_loss", "completion_length", "reward_std"):
        assert len(_logs(result, key)) == 6 and all(math.isfinite(v) for v in _logs(result, key)), key
    assert _logs(result, "kl")[-1] > 0  # the policy moved away from the reference and the KL term saw it
    assert max(_logs(result, "clip_ratio")) > 0  # the second step on each rollout clips
    assert has_value_head(result.final_dir)  # the checkpoint carries the value head (resuming needs it)
    assert (Path(tmp_path / "out") / "loss.png").is_file()


def _reward_model(base: Path, out: Path) -> Path:
    """A 'reward model' checkpoint: the tiny LM with a seeded value head, saved as `rlhf --rlhf_type rm` saves one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    add_value_head(model, seed=3)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.mark.slow
def test_ppo_separate_value_model_and_reward_model(tiny_text_dir, tmp_path):
    """--value_model: its frozen backbone feeds the policy's value head, which starts from the reward model's head;
    --reward_model scores each conversation (the reward logged equals the reward model's own score)."""
    rm = _reward_model(tiny_text_dir, tmp_path / "rm")
    (tmp_path / "record.py").write_text(
        "import json\n"
        "def record(completions, messages, **_):\n"
        f"    with open({str(tmp_path / 'seen.jsonl')!r}, 'a') as f:\n"
        "        f.write(json.dumps(messages) + '\\n')\n"
        "    return [0.0] * len(completions)\n")
    result = rlhf(parse("rlhf", COMMON + _prompts(tmp_path)[:2] + [
        "--rlhf_type", "ppo", "--model", str(tiny_text_dir), "--train_type", "lora", "--learning_rate", "1e-2",
        "--per_device_train_batch_size", "4", "--max_completion_length", "4", "--max_steps", "1",
        "--logging_steps", "1", "--reward_funcs", "record", "--external_plugins", str(tmp_path / "record.py"),
        "--reward_model", str(rm), "--value_model", str(rm), "--num_ppo_epochs", "1",
        "--output_dir", str(tmp_path / "out")]))

    scorer = load_reward_model(str(rm))
    conversations = [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()][0]
    encoded = [encode(parse_row({"messages": m}), scorer.processor) for m in conversations]
    batch = Collator(scorer.tokenizer.pad_token_id)(encoded)
    batch.pop("labels")
    with torch.no_grad():
        expected = sequence_scores(scorer.model, batch).mean().item()
    assert _logs(result, "rewards/reward_model") == [pytest.approx(expected, abs=1e-5)]
    head = dict(result.model.named_parameters())["base_model.model.v_head.weight"]
    assert head.requires_grad and not torch.equal(head.detach(), scorer.model.v_head.weight)  # started there, trained
    assert not any("value_model" in n for n, _ in result.model.named_parameters())  # the critic's backbone is apart


def test_rollouts_serve_several_steps_on_the_same_prompts():
    assert list(RepeatSteps(range(7), step=3, times=2)) == [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 6]
    assert len(RepeatSteps(range(7), step=3, times=2)) == 14

    def prompt(line):
        return SimpleNamespace(sample=SimpleNamespace(conv=SimpleNamespace(source="p", line=line)),
                               prompt=SimpleNamespace(input_ids=[line]))

    reuse = RolloutReuse(2)
    trainer, model = SimpleNamespace(args=SimpleNamespace(gradient_accumulation_steps=2)), torch.nn.Linear(1, 1)
    made = []
    make = lambda: made.append(len(made)) or len(made) - 1  # noqa: E731
    a, b = [prompt(1)], [prompt(2)]
    got = [reuse.get(trainer, model, p, make) for p in (a, b, a, b, b, a)]
    # steps 1-2: rollouts 0 and 1 made, then reused for the same prompts; then a fresh step whose prompts differ
    assert got[:4] == [(0, True), (1, True), (0, False), (1, False)]
    assert got[4] == (2, True) and got[5] == (3, True)
    model.eval()
    assert reuse.get(trainer, model, a, make) == (4, True)  # evaluation never reuses
