"""Native scoring of tasks: generation (or option likelihood) through an engine, then each layout's metrics."""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from ..errors import ConfigError
from ..infer.engine import GenerationSettings, Request, TransformersEngine, generate_many
from .likelihood import option_logprobs, pick
from .tasks import LAYOUTS, EvalItem, Task


@dataclass
class TaskOutcome:
    metrics: dict[str, dict[str, float]]
    samples: dict[str, int]
    predictions: list[dict]


def score_tasks(engine, tasks: list[Task], settings: GenerationSettings, adapters: tuple[str, ...],
                batch_size: int, *, progress: bool = True) -> TaskOutcome:
    """Native scoring of every task: generation (or option likelihood) then the layout's metrics."""
    metrics, samples, predictions = {}, {}, []
    for task in tasks:
        layout = LAYOUTS[task.layout]
        with tqdm(total=len(task.items), desc=f"eval {task.name}", unit="sample", disable=not progress) as bar:
            if layout.likelihood:
                if not isinstance(engine, TransformersEngine):
                    raise ConfigError(f"{task.name}: multiple choice by likelihood needs --infer_backend transformers")
                logprobs = option_logprobs(engine, task.items, adapters, batch_size, on_item=bar.update)
                responses = [pick(item, lp) for item, lp in zip(task.items, logprobs)]
            else:
                logprobs = None
                requests = [Request(conversation=i.conversation, settings=settings, adapters=adapters)
                            for i in task.items]
                responses = [c.text.strip() for c in generate_many(engine, requests, batch_size, on_batch=bar.update)]
        scores = [layout.score(r, item) for r, item in zip(responses, task.items)]
        metrics[task.name] = layout.aggregate(task.items, scores)
        samples[task.name] = len(task.items)
        for k, (item, response, score) in enumerate(zip(task.items, responses, scores)):
            predictions.append(prediction_row(task.name, item, response, score, logprobs[k] if logprobs else None))
    return TaskOutcome(metrics, samples, predictions)


def prediction_row(task: str, item: EvalItem, response: str, score: dict, logprobs: list[float] | None) -> dict:
    conv = item.conversation
    row = {"task": task, "source": item.source, "messages": conv.messages,
           "images": [x if isinstance(x, str) and not x.startswith("data:") else "<embedded image>"
                      for x in conv.images],
           "reference": item.reference, "response": response, "score": score}
    if item.choices is not None:
        row["choices"] = item.choices
    if logprobs is not None:
        row["logprobs"] = logprobs
    if item.answers is not None:
        row["answers"] = item.answers
    return row
