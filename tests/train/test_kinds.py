"""The registry of training kinds: every entry prepares a run on the tiny model and computes a finite loss."""

from __future__ import annotations

import math

import pytest
from helpers import write_jsonl

from tailorkit.cli import parse
from tailorkit.config.rlhf import RLHF_TYPES
from tailorkit.train.algorithm import Algorithm, SftAlgorithm
from tailorkit.train.gkd import GkdAlgorithm
from tailorkit.train.grpo import GrpoAlgorithm
from tailorkit.train.kinds import KINDS
from tailorkit.train.ppo import PpoAlgorithm
from tailorkit.train.preference import DpoAlgorithm, KtoAlgorithm, ReferenceFreeAlgorithm, RewardModelAlgorithm
from tailorkit.train.recipe import prepare

USER = {"role": "user", "content": "Tell me a story about a cat."}
ROWS = {
    "chat": [{"messages": [USER, {"role": "assistant", "content": r}]} for r in ("yes", "no")],
    "text": [{"text": "The quick brown fox jumps over the lazy dog."}, {"text": "Hello! How are you?"}],
    "pairs": [{"messages": [USER, {"role": "assistant", "content": "yes"}], "rejected_response": r}
              for r in ("no", "the dog")],
    "kto": [{"messages": [USER, {"role": "assistant", "content": r}], "label": r == "yes"} for r in ("yes", "no")],
    "prompts": [{"messages": [USER], "solution": "yes"}, {"messages": [USER], "solution": "no"}],
}
ROWS_OF = {"sft": "chat", "pt": "text", "kto": "kto", "grpo": "prompts", "ppo": "prompts", "gkd": "chat"}
ALGORITHM_OF = {"sft": SftAlgorithm, "pt": SftAlgorithm, "dpo": DpoAlgorithm, "orpo": ReferenceFreeAlgorithm,
                "simpo": ReferenceFreeAlgorithm, "cpo": ReferenceFreeAlgorithm, "kto": KtoAlgorithm,
                "rm": RewardModelAlgorithm, "ppo": PpoAlgorithm, "gkd": GkdAlgorithm, "grpo": GrpoAlgorithm}
ONLINE = ["--max_completion_length", "3", "--reward_funcs", "accuracy"]
EXTRA = {"grpo": ["--num_generations", "2", *ONLINE], "ppo": ONLINE, "gkd": ["--max_completion_length", "3"]}


def test_registry_holds_sft_pt_and_every_rlhf_type():
    assert list(KINDS) == ["sft", "pt", *RLHF_TYPES]
    assert all(name == kind.name for name, kind in KINDS.items())


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_prepares_a_run_and_computes_a_loss(name, tiny_text_dir, tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS[ROWS_OF.get(name, "pairs")])
    common = ["--model", str(tiny_text_dir), "--dataset", str(data), "--output_dir", str(tmp_path / "out"),
              "--torch_dtype", "float32", "--per_device_train_batch_size", "2", "--max_steps", "1",
              "--group_by_length", "true"]  # every kind's encoded items have a length to group by
    verb, extra = (name, []) if name in ("sft", "pt") else ("rlhf", ["--rlhf_type", name])
    extra += EXTRA.get(name, [])
    if name == "gkd":  # the teacher: the base itself, i.e. the LoRA student with its adapter disabled
        extra += ["--teacher_model", str(tiny_text_dir), "--lmbda", "1.0"]
    run = prepare(parse(verb, common + extra), name)
    assert run.kind is KINDS[name] and type(run.algorithm) is ALGORITHM_OF[name]
    assert isinstance(run.algorithm, Algorithm) and run.trainer.algorithm is run.algorithm
    assert run.trainer.tuner_plan is run.plan and run.report.kept == 2
    batch = next(iter(run.trainer.get_train_dataloader()))
    run.model.train()
    run.trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which is not running
    loss = run.trainer.compute_loss(run.model, batch)
    assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.requires_grad
    metrics = run.algorithm.pop_metrics({"loss": loss.item()})
    assert isinstance(metrics, dict) and all(math.isfinite(v) for v in metrics.values())
