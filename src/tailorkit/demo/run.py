"""`tailorkit demo`: tiny Qwen2.5-VL, synthetic shapes, accuracy before and after fine-tuning."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..data.collate import Collator
from ..data.dataset import load_conversations
from ..data.encode import encode
from ..data.formats import Conversation, text_of
from ..infer.engine import GenerationSettings, TransformersEngine
from ..train.losses import shifted_token_nll


@dataclass
class _DemoArgs:
    output_dir: str = field(default="demo_output", metadata={"help": "parent folder; each run gets a new subfolder"})
    train_samples: int = field(default=1200, metadata={"help": "synthetic training rows"})
    eval_samples: int = field(default=100, metadata={"help": "synthetic held-out rows"})
    num_train_epochs: float = field(default=5.0, metadata={"help": "passes over the training rows"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "rows per step"})
    seed: int = field(default=42, metadata={"help": "random seed"})


@dataclass
class DemoConfig:
    args: _DemoArgs = field(default_factory=_DemoArgs)


@dataclass
class DemoResult:
    run_dir: Path
    accuracy_before: float
    accuracy_after: float
    choice_before: float
    choice_after: float
    seconds: float


def evaluate(engine: TransformersEngine, convs: list[Conversation]) -> float:
    """Exact-match accuracy of greedy replies against each row's last assistant message."""
    prompts = [replace(c, messages=c.messages[:-1]) for c in convs]
    replies = engine.generate(prompts, GenerationSettings(max_new_tokens=8), batch_size=16)
    gold = [text_of(c.messages[-1]["content"]).strip().lower() for c in convs]
    return sum(r.lower() == g for r, g in zip(replies, gold)) / len(convs)


@torch.no_grad()
def choice_accuracy(model, processor, convs: list[Conversation], options_for) -> float:
    """Accuracy when the model picks, among the valid answers, the one it gives the highest likelihood.

    Unlike free generation this is at chance level for an untrained model, so before/after is comparable.
    """
    model.eval()
    pad = getattr(processor, "tokenizer", processor).pad_token_id
    hits = 0
    for conv in convs:
        options = options_for(conv)
        variants = [replace(conv, messages=conv.messages[:-1] + [{"role": "assistant", "content": o}])
                    for o in options]
        batch = Collator(pad)([encode(v, processor) for v in variants])
        labels = batch.pop("labels")
        nll = shifted_token_nll(model(**batch).logits, labels).sum(dim=1)
        hits += options[int(nll.argmin())] == text_of(conv.messages[-1]["content"]).strip()
    return hits / len(convs)


def demo(cfg: DemoConfig) -> DemoResult:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..config import SftConfig, build_config
    from ..models.tiny import build_qwen2_5_vl
    from ..train.sft import sft
    from .shapes import chance_accuracy, options_for, write_split

    a = cfg.args
    start = time.time()
    run = Path(a.output_dir) / time.strftime("run-%Y%m%d-%H%M%S")
    run.mkdir(parents=True, exist_ok=False)
    print(f"[demo] building a tiny Qwen2.5-VL in {run / 'model'}")
    build_qwen2_5_vl(run / "model")
    train_file = write_split(run / "data", "train", a.train_samples, a.seed)
    eval_file = write_split(run / "data", "eval", a.eval_samples, a.seed + 1)
    eval_convs = load_conversations([str(eval_file)])

    processor = AutoProcessor.from_pretrained(run / "model")
    base = AutoModelForImageTextToText.from_pretrained(run / "model")
    before = evaluate(TransformersEngine(base, processor), eval_convs)
    choice_before = choice_accuracy(base, processor, eval_convs, options_for)
    print(f"[demo] before training: generated answers {before:.1%} correct, best-scored valid answer "
          f"{choice_before:.1%} (chance {chance_accuracy():.1%})")

    train_cfg = build_config(SftConfig, {
        "model": str(run / "model"), "dataset": [str(train_file)], "train_type": "full", "freeze_vit": False,
        "freeze_aligner": False, "torch_dtype": "float32", "num_train_epochs": a.num_train_epochs,
        "learning_rate": a.learning_rate, "per_device_train_batch_size": a.per_device_train_batch_size,
        "warmup_ratio": 0.05, "weight_decay": 0.0, "logging_steps": 5, "save_strategy": "no",
        "max_length": 128, "output_dir": str(run / "train"), "seed": a.seed})
    result = sft(train_cfg)

    tuned = AutoModelForImageTextToText.from_pretrained(result.final_dir)
    tuned_processor = AutoProcessor.from_pretrained(result.final_dir)
    after = evaluate(TransformersEngine(tuned, tuned_processor), eval_convs)
    choice_after = choice_accuracy(tuned, tuned_processor, eval_convs, options_for)
    seconds = time.time() - start
    line = "  " + "-" * 62
    print(f"\n  tiny Qwen2.5-VL on synthetic shapes, {len(eval_convs)} held-out rows\n{line}")
    print(f"  {'':28}{'before':>10}{'after':>10}{'chance':>10}")
    print(f"  {'generated answer correct':28}{before:>10.1%}{after:>10.1%}{chance_accuracy():>10.1%}")
    print(f"  {'best-scored valid answer':28}{choice_before:>10.1%}{choice_after:>10.1%}{chance_accuracy():>10.1%}")
    print(line)
    print(f"  checkpoint: {result.final_dir}\n  loss plot:  {result.plot}\n  total time: {seconds:.0f} s\n")
    return DemoResult(run_dir=run, accuracy_before=before, accuracy_after=after, choice_before=choice_before,
                      choice_after=choice_after, seconds=seconds)
