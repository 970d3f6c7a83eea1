"""Multiple choice by likelihood: the batched scores equal one unpadded forward pass per option, and a model
trained to prefer an answer ranks it first."""

from __future__ import annotations

import pytest
import torch
from eval_fixtures import write_mcq
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import TEXT_PAIRS, text_chat_rows, write_jsonl
from tailorkit.config import SftConfig, build_config
from tailorkit.data.encode import IGNORE, encode
from tailorkit.eval.likelihood import with_reply, option_logprobs
from tailorkit.eval.tasks import load_task
from tailorkit.infer.engine import TransformersEngine
from tailorkit.train.sft import sft

COLOURS = [a for _, a in TEXT_PAIRS]


def _mcq_file(root):
    return write_mcq(root, [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                             "choices": COLOURS} for q, a in TEXT_PAIRS])


def _engine(model_dir) -> TransformersEngine:
    return TransformersEngine(AutoModelForCausalLM.from_pretrained(model_dir).eval(),
                              AutoTokenizer.from_pretrained(model_dir))


def test_batched_option_scores_equal_single_forward_passes(tiny_text_dir, tmp_path):
    task = load_task(f"mcq:{_mcq_file(tmp_path)}")
    engine = _engine(tiny_text_dir)
    batched = option_logprobs(engine, task.items, (), batch_size=3)  # padded batches that cut across items
    item = task.items[1]
    for k, option in enumerate(item.choices):
        enc = encode(with_reply(item, option), engine.processor)
        with torch.no_grad():
            logits = engine.model(input_ids=torch.tensor([enc.input_ids])).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        expected = sum(logp[t - 1, tok].item() for t, tok in enumerate(enc.labels) if tok != IGNORE)
        assert batched[1][k] == pytest.approx(expected, abs=1e-4)


def test_a_model_trained_to_prefer_an_answer_ranks_it_first(tiny_text_dir, tmp_path):
    task = load_task(f"mcq:{_mcq_file(tmp_path)}")
    before = option_logprobs(_engine(tiny_text_dir), task.items, (), batch_size=8)
    cfg = build_config(SftConfig, {
        "model": str(tiny_text_dir), "dataset": [str(write_jsonl(tmp_path / "train.jsonl", text_chat_rows(16)))],
        "train_type": "full", "torch_dtype": "float32", "max_steps": 25, "per_device_train_batch_size": 4,
        "learning_rate": 3e-3, "lr_scheduler_type": "constant", "weight_decay": 0.0, "save_strategy": "no",
        "logging_steps": 5, "output_dir": str(tmp_path / "out")})
    after = option_logprobs(_engine(sft(cfg).final_dir), task.items, (), batch_size=8)
    for item, scores in zip(task.items, after):
        right = item.choices.index(item.reference)
        assert max(range(len(scores)), key=scores.__getitem__) == right, (item.reference, scores)
    # the untrained model had no such preference: its right answers were not all ranked first
    assert sum(max(range(4), key=s.__getitem__) == task.items[i].choices.index(task.items[i].reference)
               for i, s in enumerate(before)) < len(task.items)
