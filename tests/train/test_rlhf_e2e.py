"""End-to-end `tailorkit rlhf` runs on tiny models: DPO (VL, LoRA), KTO, GRPO (text, VL); reward models, PPO,
GKD and the GRPO variants have their own files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tailorkit.cli import parse
from tailorkit.data.collate import Collator
from tailorkit.models.load import load_bundle
from tailorkit.config.train import ModelArgs
from tailorkit.train.preference import token_logps
from tailorkit.data.dataset import encode_all
from tailorkit.data.preference import PreferencePair, encode_pair, load_rows, parse_preference_row
from tailorkit.train.rlhf import rlhf

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
WORDS = ["red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "triangle", "star", "cat", "dog"]
COMMON = ["--torch_dtype", "float32", "--save_strategy", "no", "--lr_scheduler_type", "constant",
          "--weight_decay", "0"]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _colour_pairs(folder: Path, n: int) -> str:
    from PIL import Image

    names = list(COLOURS)
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(folder / f"{name}.png")
    rows = [{"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                          {"role": "assistant", "content": names[i % 3]}],
             "rejected_response": names[(i + 1) % 3], "images": [f"{names[i % 3]}.png"]} for i in range(n)]
    return _write(folder / "pref.jsonl", rows)


def _run(argv: list[str]):
    return rlhf(parse("rlhf", COMMON + argv))


def _logs(result, key):
    return [r[key] for r in result.log_history if key in r]


@pytest.mark.slow
def test_dpo_vl_lora_margin_rises_and_reference_is_unchanged(tiny_vl_dir, tmp_path):
    data = _colour_pairs(tmp_path, 12)
    result = _run(["--rlhf_type", "dpo", "--model", str(tiny_vl_dir), "--dataset", data, "--train_type", "lora",
                   "--lora_rank", "32", "--lora_alpha", "32", "--freeze_vit", "true", "--learning_rate", "5e-3",
                   "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_steps", "24",
                   "--logging_steps", "4", "--output_dir", str(tmp_path / "out")])
    margins = _logs(result, "rewards/margins")
    print(f"dpo margins every 4 steps: {[round(m, 4) for m in margins]}")
    assert len(margins) == 6
    assert margins[-1] > margins[0] and margins[-1] > 0.05, margins
    assert _logs(result, "rewards/accuracies")[-1] >= 0.75

    # The reference (adapter disabled) gives the base model's log-probs exactly; the policy moved away.
    bundle = load_bundle(ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32"))
    pairs = load_rows([data], parse_preference_row)[:4]
    assert all(isinstance(p, PreferencePair) for p in pairs)
    encoded, _ = encode_all(pairs, bundle.processor, max_length=512, truncation="raise", encode_item=encode_pair)
    batch = Collator(bundle.tokenizer.pad_token_id)([e.chosen for e in encoded])
    model = result.model.eval()
    with torch.no_grad():
        base, mask = token_logps(bundle.model.eval(), batch)
        with model.disable_adapter():
            ref, _ = token_logps(model, batch)
        policy, _ = token_logps(model, batch)
    torch.testing.assert_close(ref[mask], base[mask], rtol=1e-5, atol=1e-5)
    assert (policy[mask] - base[mask]).abs().max() > 1e-3
    assert (Path(result.final_dir) / "adapter_config.json").is_file()


@pytest.mark.slow
def test_kto_unpaired(tiny_text_dir, tmp_path):
    good = [{"messages": [{"role": "user", "content": f"Tell me a story about a {w}"},
                          {"role": "assistant", "content": "yes"}], "label": True} for w in WORDS]
    bad = [{"messages": [{"role": "user", "content": f"What is the {w}?"},
                         {"role": "assistant", "content": "no"}], "label": False} for w in WORDS[:7]]
    data = _write(tmp_path / "kto.jsonl", good + bad)
    val = _write(tmp_path / "val.jsonl", good[:2] + bad[:2])
    result = _run(["--rlhf_type", "kto", "--model", str(tiny_text_dir), "--dataset", data, "--learning_rate", "5e-3",
                   "--val_dataset", val, "--eval_steps", "10", "--save_steps", "10", "--save_strategy", "steps",
                   "--per_device_train_batch_size", "4", "--max_steps", "20", "--logging_steps", "5",
                   "--desirable_weight", "1.0", "--undesirable_weight", "1.5", "--output_dir", str(tmp_path / "out")])
    losses, chosen, rejected = _logs(result, "loss"), _logs(result, "rewards/chosen"), _logs(result, "rewards/rejected")
    assert losses[-1] < losses[0]
    assert chosen[-1] > 0 > rejected[-1], (chosen, rejected)
    eval_losses = _logs(result, "eval_loss")
    assert len(eval_losses) == 2 and eval_losses[1] < eval_losses[0]
    assert len(_logs(result, "eval_kl")) == 2


def _rm_rows(words, good: str, bad: str):
    """Chosen replies start with ``good``, rejected with ``bad``; the rest of each reply varies."""
    return [{"messages": [{"role": "user", "content": f"Is the {w} fine?"},
                          {"role": "assistant", "content": f"{good} {WORDS[(i * 5 + 3) % len(WORDS)]}"}],
             "rejected_response": f"{bad} {WORDS[(i * 7 + 1) % len(WORDS)]}"} for i, w in enumerate(words)]


PLUGIN = '''
def quarter_ids(completions, completion_ids, **columns):
    """Share of completion tokens whose id is a multiple of 4 (a fixed, verifiable target set)."""
    return [sum(1 for t in ids if t % 4 == 0) / max(len(ids), 1) for ids in completion_ids]
'''


@pytest.mark.slow
def test_grpo_text_mean_reward_increases(tiny_text_dir, tmp_path):
    (tmp_path / "my_rewards.py").write_text(PLUGIN)
    rows = [{"messages": [{"role": "user", "content": f"Answer with one word. What colour is the {w}?"}],
             "solution": "red"} for w in WORDS]
    data = _write(tmp_path / "prompts.jsonl", rows)
    result = _run(["--rlhf_type", "grpo", "--model", str(tiny_text_dir), "--dataset", data, "--train_type", "full",
                   "--learning_rate", "1e-2", "--per_device_train_batch_size", "4", "--num_generations", "4",
                   "--max_completion_length", "8", "--max_steps", "30", "--logging_steps", "5",
                   "--external_plugins", str(tmp_path / "my_rewards.py"), "--reward_funcs", "quarter_ids", "accuracy",
                   "--reward_weights", "1", "0.5", "--output_dir", str(tmp_path / "out")])
    rewards = _logs(result, "reward")
    print(f"grpo mean reward every 5 steps: {[round(r, 3) for r in rewards]}")
    assert len(rewards) == 6 and all(math.isfinite(r) for r in rewards)
    assert rewards[-1] > rewards[0] + 0.2, rewards
    assert _logs(result, "kl")[-1] > 0  # the policy moved away from the reference and the KL term saw it


@pytest.mark.slow
def test_grpo_vl_step_with_images(tiny_vl_dir, tmp_path):
    from PIL import Image

    (tmp_path / "my_rewards.py").write_text(PLUGIN)
    rows = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(tmp_path / f"{name}.png")
        rows.append({"messages": [{"role": "user", "content": "<image>What colour is the shape?"}],
                     "images": [f"{name}.png"], "solution": name})
    data = _write(tmp_path / "prompts.jsonl", rows)
    before = load_bundle(ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32")).model.state_dict()
    result = _run(["--rlhf_type", "grpo", "--model", str(tiny_vl_dir), "--dataset", data, "--train_type", "lora",
                   "--learning_rate", "1e-2", "--per_device_train_batch_size", "2", "--num_generations", "2",
                   "--max_completion_length", "4", "--max_steps", "2", "--logging_steps", "1",
                   "--external_plugins", str(tmp_path / "my_rewards.py"),
                   "--reward_funcs", "quarter_ids", "accuracy", "format", "--output_dir", str(tmp_path / "out")])
    assert len(_logs(result, "reward")) == 2
    assert all(n > 0 for n in _logs(result, "completion_length"))
    trained = {n: p for n, p in result.model.named_parameters() if p.requires_grad}
    assert trained and any(p.abs().sum() > 0 for n, p in trained.items() if "lora_B" in n)
    merged = result.model.merge_and_unload().state_dict()
    assert torch.equal(merged["model.visual.blocks.0.attn.qkv.weight"], before["model.visual.blocks.0.attn.qkv.weight"])


@pytest.mark.slow
def test_full_dpo_reference_copy_precomputed_and_ref_model_agree(tiny_text_dir, tmp_path):
    rows = _rm_rows(WORDS[:6], "yes thank you", "no the dog")
    data = _write(tmp_path / "pref.jsonl", rows)
    first_losses = []
    for i, extra in enumerate([[], ["--precompute_ref_log_probs", "true"], ["--ref_model", str(tiny_text_dir)]]):
        result = _run(["--rlhf_type", "dpo", "--model", str(tiny_text_dir), "--dataset", data, "--train_type", "full",
                       "--learning_rate", "1e-3", "--per_device_train_batch_size", "2", "--max_steps", "3",
                       "--logging_steps", "1", "--output_dir", str(tmp_path / f"out{i}"), *extra])
        first_losses.append(_logs(result, "loss"))
    # Step 1: policy == reference, so the sigmoid loss is log 2 in both runs; later steps agree too.
    assert first_losses[0][0] == pytest.approx(math.log(2), abs=1e-4)
    assert first_losses[0] == pytest.approx(first_losses[1], abs=1e-4)
    assert first_losses[0] == pytest.approx(first_losses[2], abs=1e-4)
    assert first_losses[0][-1] < first_losses[0][0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["orpo", "simpo", "cpo"])
def test_reference_free_types_train_end_to_end(kind, tiny_text_dir, tmp_path):
    data = _write(tmp_path / "pref.jsonl", _rm_rows(WORDS[:4], "yes", "no"))
    result = _run(["--rlhf_type", kind, "--model", str(tiny_text_dir), "--dataset", data, "--learning_rate", "1e-3",
                   "--per_device_train_batch_size", "2", "--max_steps", "2", "--logging_steps", "1",
                   "--output_dir", str(tmp_path / "out")])
    assert all(math.isfinite(x) for x in _logs(result, "loss")) and len(_logs(result, "rewards/margins")) == 2
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert len(_logs(result, key)) == 2, key  # what users watch, in logging.jsonl
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at 0: every adapter trained
