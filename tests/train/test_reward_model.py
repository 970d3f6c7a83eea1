"""Reward models (`rlhf --rlhf_type rm`): a value head on a causal LM or VLM, trained on pairs, reloaded, used as
--reward_model by grpo and ppo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tailorkit.cli import parse
from tailorkit.config.train import ModelArgs
from tailorkit.data.collate import Collator
from tailorkit.data.dataset import encode_all
from tailorkit.data.preference import encode_pair, load_rows, parse_preference_row
from tailorkit.errors import DataError, ModelError
from tailorkit.models.load import load_bundle
from tailorkit.models.value_head import add_value_head, has_value_head, load_reward_model, sequence_scores
from tailorkit.train.rlhf import rlhf

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
COMMON = ["--torch_dtype", "float32", "--save_strategy", "no", "--lr_scheduler_type", "constant", "--weight_decay",
          "0"]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _colour_pairs(folder: Path, question: str, n: int) -> list[dict]:
    """Chosen: the colour of the image; rejected: one of the other two."""
    names = list(COLOURS)
    for name, rgb in COLOURS.items():
        from PIL import Image

        Image.new("RGB", (56, 56), rgb).save(folder / f"{name}.png")
    return [{"messages": [{"role": "user", "content": f"<image>{question}"},
                          {"role": "assistant", "content": names[i % 3]}],
             "rejected_response": names[(i + 1 + (i // 3) % 2) % 3], "images": [f"{names[i % 3]}.png"]}
            for i in range(n)]


def _accuracy(model, processor, pairs) -> float:
    encoded, _ = encode_all(pairs, processor, max_length=512, truncation="raise", encode_item=encode_pair)
    batch = Collator(getattr(processor, "tokenizer", processor).pad_token_id)(
        [e.chosen for e in encoded] + [e.rejected for e in encoded])
    batch.pop("labels")
    with torch.no_grad():
        chosen, rejected = sequence_scores(model, batch).chunk(2)
    return (chosen > rejected).float().mean().item()


@pytest.mark.slow
def test_vl_reward_model_learns_a_preference_and_reloads(tiny_vl_dir, tmp_path):
    train = _write(tmp_path / "train.jsonl", _colour_pairs(tmp_path, "What colour is the shape?", 18))
    held_out = load_rows([_write(tmp_path / "test.jsonl", _colour_pairs(tmp_path, "Which colour do you see?", 6))],
                         parse_preference_row)
    untrained = load_bundle(ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32"))
    add_value_head(untrained.model, seed=42)  # the head the run starts from (--seed 42)
    before = _accuracy(untrained.model.eval(), untrained.processor, held_out)

    result = rlhf(parse("rlhf", COMMON + [
        "--rlhf_type", "rm", "--model", str(tiny_vl_dir), "--dataset", train, "--train_type", "full",
        "--learning_rate", "1e-3", "--per_device_train_batch_size", "6", "--max_steps", "30", "--logging_steps", "5",
        "--output_dir", str(tmp_path / "out")]))
    after = _accuracy(result.model.eval(), result.bundle.processor, held_out)
    print(f"VL reward model held-out pairwise accuracy: before {before:.2f}, after {after:.2f}")
    assert before < 0.9 and after >= 0.9, (before, after)
    accuracies = [r["rewards/accuracies"] for r in result.log_history if "rewards/accuracies" in r]
    assert accuracies[-1] >= 0.9 and len(accuracies) == 6

    # The checkpoint is the plain VLM (transformers loads it) plus v_head.weight; our loader restores both.
    final = Path(result.final_dir)
    assert has_value_head(final)
    reloaded = load_reward_model(str(tmp_path / "out"), torch_dtype="float32")  # a run folder: its checkpoint-final
    encoded, _ = encode_all(held_out, reloaded.processor, max_length=512, truncation="raise", encode_item=encode_pair)
    batch = Collator(reloaded.tokenizer.pad_token_id)([e.chosen for e in encoded])
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(sequence_scores(reloaded.model, batch), sequence_scores(result.model, batch),
                                   rtol=0, atol=1e-5)
    from transformers import AutoModelForImageTextToText

    assert AutoModelForImageTextToText.from_pretrained(final).config.model_type == "qwen2_5_vl"

    # `tailorkit export` of the full checkpoint keeps its trained head (verified value for value on an image row)
    from tailorkit.config.export import ExportConfig
    from tailorkit.config.loading import build_config
    from tailorkit.export.run import export

    report = export(build_config(ExportConfig, dict(output_dir=str(tmp_path / "export"), torch_dtype="float32",
                                                    merge_lora=True, ckpt_dir=str(tmp_path / "out")))).report
    assert report["head"] == "reward" and report["merge"]["max_abs_logit_diff"] <= report["merge"]["tolerance"]
    with torch.no_grad():
        torch.testing.assert_close(sequence_scores(load_reward_model(str(tmp_path / "export")).model, batch),
                                   sequence_scores(result.model, batch), rtol=0, atol=1e-5)


def test_lora_reward_model_checkpoint_reloads_with_its_head(tiny_text_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Is the {w} fine?"}, {"role": "assistant", "content": "yes"}],
             "rejected_response": "no", "margin": 1.0 if i % 2 else 0.5} for i, w in enumerate(["cat", "dog", "fox"])]
    result = rlhf(parse("rlhf", COMMON + [
        "--rlhf_type", "rm", "--model", str(tiny_text_dir), "--dataset", _write(tmp_path / "p.jsonl", rows),
        "--learning_rate", "1e-2", "--per_device_train_batch_size", "3", "--max_steps", "2", "--logging_steps", "1",
        "--output_dir", str(tmp_path / "out")]))
    final = Path(result.final_dir)
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert "v_head" in adapter["modules_to_save"]  # plain peft restores the head onto a model that has one
    reloaded = load_reward_model(str(final))
    pairs = load_rows([str(tmp_path / "p.jsonl")], parse_preference_row)
    assert [p.margin for p in pairs] == [0.5, 1.0, 0.5]
    encoded, _ = encode_all(pairs, reloaded.tokenizer, max_length=256, truncation="raise", encode_item=encode_pair)
    batch = Collator(reloaded.tokenizer.pad_token_id)([e.chosen for e in encoded])
    batch.pop("labels")
    with torch.no_grad():
        expected = sequence_scores(result.model.eval(), batch)
        torch.testing.assert_close(sequence_scores(reloaded.model, batch), expected, rtol=0, atol=1e-5)
    trained = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert trained and all(p.abs().sum() > 0 for p in trained)

    # `tailorkit export` merges the adapter and keeps the head: the export scores as the checkpoint does
    from tailorkit.config.export import ExportConfig
    from tailorkit.config.loading import build_config
    from tailorkit.export.run import export

    report = export(build_config(ExportConfig, dict(output_dir=str(tmp_path / "export"), torch_dtype="float32",
                                                    merge_lora=True, ckpt_dir=str(tmp_path / "out")))).report
    assert report["head"] == "reward" and report["merge"]["max_abs_logit_diff"] <= report["merge"]["tolerance"]
    with torch.no_grad():
        exported = sequence_scores(load_reward_model(str(tmp_path / "export")).model, batch)
    torch.testing.assert_close(exported, expected, rtol=0, atol=1e-5)
    lm_head = dict(result.model.named_parameters())["base_model.model.lm_head.weight"]
    assert not lm_head.requires_grad  # a score never reads the LM head: frozen, so DDP sees no unused parameter


def test_reward_model_errors(tiny_text_dir, tmp_path):
    good = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "yes"}],
            "rejected_response": "no"}
    with pytest.raises(DataError, match=r"p\.jsonl:2: margin: 'margin' must be a number"):
        parse_preference_row({**good, "margin": "big"}, source="p.jsonl", line=2)
    assert parse_preference_row({**good, "margin": 2}).margin == 2.0
    with pytest.raises(ModelError, match="no value head"):
        load_reward_model(str(tiny_text_dir))  # a plain causal LM is not a reward model
