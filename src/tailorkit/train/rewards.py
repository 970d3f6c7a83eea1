"""Rewards of the online algorithms (grpo, ppo): built-in functions under ms-swift's names, user functions from
Python files, and reward models (value-head checkpoints of `rlhf --rlhf_type rm`).

A reward function has the signature::

    def my_reward(completions: list[str], **columns) -> list[float | None]

``completions`` are the decoded replies of one training step (each prompt repeated
``--num_generations`` times, in order); ``columns`` holds every other column of the dataset rows
(``solution``, ...), one value per completion, plus ``completion_ids`` (the generated token ids, end of
sequence included), ``completion_lengths`` (their counts) and ``messages`` (the conversation: prompt
and model turns).
``None`` means "does not apply to this sample" and counts as 0 after weighting.
A file passed with ``--external_plugins my_rewards.py`` makes each of its public functions usable by
name in ``--reward_funcs`` (and, for multi-turn rollouts, in ``--multi_turn_scheduler``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.collate import Collator
from ..data.encode import encode
from ..data.formats import Conversation
from ..errors import ConfigError
from ..models.value_head import load_reward_model, sequence_scores

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def accuracy(completions: list[str], solution: list | None = None, **_) -> list[float]:
    """1.0 when the reply (or its <answer>...</answer> part) equals the row's ``solution``, else 0.0."""
    if solution is None:
        raise ConfigError("the accuracy reward needs a 'solution' column in the dataset")
    out = []
    for text, sol in zip(completions, solution):
        found = _ANSWER.search(text)
        answer = found.group(1) if found else text
        out.append(float(answer.strip() == str(sol).strip()))
    return out


def make_format(pattern: str) -> Callable:
    """1.0 when the whole reply matches ``pattern`` (default: <think>...</think><answer>...</answer>)."""
    try:
        regex = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise ConfigError(f"format_pattern {pattern!r} is not a valid regular expression: {e}") from None

    def format(completions: list[str], **_) -> list[float]:  # noqa: A001 - ms-swift's name
        return [1.0 if regex.match(text.strip()) else 0.0 for text in completions]

    return format


def make_soft_overlong(max_length: int, cache_length: int) -> Callable:
    """DAPO's length penalty: 0 up to max-cache tokens, then linearly down to -1 at max_length."""
    if not 0 < cache_length <= max_length:
        raise ConfigError(f"soft_cache_length must be in (0, max_completion_length={max_length}], got {cache_length}")

    def soft_overlong(completions: list[str], completion_lengths: list[int], **_) -> list[float]:
        free = max_length - cache_length
        return [0.0 if n <= free else max(-1.0, (free - n) / cache_length) for n in completion_lengths]

    return soft_overlong


def load_plugins(paths: list[str]) -> dict[str, Callable]:
    """Public functions of each plugin file, by name."""
    found: dict[str, Callable] = {}
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"external_plugins: {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"tailorkit_plugin_{p.stem}", p)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # a user's file: report any failure with its path
            raise ConfigError(f"external_plugins: importing {path} failed: {type(e).__name__}: {e}") from e
        for name, fn in vars(module).items():
            if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == module.__name__:
                found[name] = fn
    return found


class RewardModelScorer:
    """A reward model scoring whole conversations (prompt + reply), each encoded with the reward model's own
    processor and chat template (it may differ from the policy's); images are kept."""

    def __init__(self, path: str, *, torch_dtype: str = "float32", batch_size: int = 8):
        self.path = path
        self.bundle = load_reward_model(path, torch_dtype=torch_dtype)
        self.collate = Collator(self.bundle.tokenizer.pad_token_id)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, conversations: list[Conversation], device) -> list[float]:
        model = self.bundle.model
        if next(model.parameters()).device != torch.device(device):
            model.to(device)
        scores = []
        for i in range(0, len(conversations), self.batch_size):
            encoded = [encode(c, self.bundle.processor) for c in conversations[i: i + self.batch_size]]
            batch = {k: v.to(device) for k, v in self.collate(encoded).items() if k != "labels"}
            scores += sequence_scores(model, batch).tolist()
        return scores


@dataclass
class RewardSet:
    """Named reward functions and reward models with weights; ``score`` gives per-source and weighted totals."""

    names: list[str]
    funcs: list[Callable]
    weights: list[float]
    models: list[RewardModelScorer] = field(default_factory=list)  # weighted after the functions, in order

    def score(self, completions: list[str], columns: dict[str, list], conversations: list[Conversation] | None = None,
              device="cpu") -> tuple[list[float], dict[str, list[float]]]:
        """(weighted total per completion, {source name: values}); reward models need ``conversations``."""
        per_func = {}
        for name, fn in zip(self.names, self.funcs):
            values = fn(completions, **columns)
            if len(values) != len(completions):
                raise ConfigError(f"reward function {name} returned {len(values)} values for {len(completions)} "
                                  "completions")
            per_func[name] = [0.0 if v is None else float(v) for v in values]
        for k, scorer in enumerate(self.models):
            per_func[f"reward_model{k if len(self.models) > 1 else ''}"] = scorer(conversations, device)
        names = list(per_func)
        total = [sum(w * per_func[n][i] for n, w in zip(names, self.weights)) for i in range(len(completions))]
        return total, per_func


def conversations_of(rollout) -> list[Conversation]:
    """Each completion's whole conversation (prompt + model turns) as a Conversation, media kept."""
    return [dataclasses.replace(s.sample.conv, messages=m)
            for s, m in zip(rollout.samples, rollout.conversation_messages())]


def build_rewards(names: list[str], weights: list[str], plugins: list[str], *, format_pattern: str,
                  max_completion_length: int, soft_cache_length: int | None, reward_models: list[str] = (),
                  torch_dtype: str = "float32") -> RewardSet:
    """Resolve ``--reward_funcs`` against the built-ins, then the plugin files' functions; load ``--reward_model``."""
    if not names and not reward_models:
        raise ConfigError("grpo and ppo need at least one --reward_funcs (accuracy, format, soft_overlong or a "
                          "function from --external_plugins) or a --reward_model")
    builtins = {"accuracy": accuracy, "format": make_format(format_pattern),
                "soft_overlong": make_soft_overlong(max_completion_length,
                                                    soft_cache_length or max(1, max_completion_length // 4))}
    user = load_plugins(plugins)
    funcs = []
    for name in names:
        fn = builtins.get(name) or user.get(name)
        if fn is None:
            known = sorted(builtins) + sorted(user)
            raise ConfigError(f"unknown reward function {name!r}; known: {', '.join(known)} (user functions come "
                              "from --external_plugins files)")
        funcs.append(fn)
    try:
        ws = [float(w) for w in weights] if weights else [1.0] * (len(names) + len(reward_models))
    except ValueError:
        raise ConfigError(f"reward_weights must be numbers, got {weights}") from None
    models = [RewardModelScorer(path, torch_dtype=torch_dtype) for path in reward_models]
    return RewardSet(list(names), funcs, ws, models)


def load_scheduler(name: str, plugins: list[str]) -> Callable:
    """``--multi_turn_scheduler``: a function of the --external_plugins files, by name."""
    user = load_plugins(plugins)
    if name not in user:
        raise ConfigError(f"multi_turn_scheduler {name!r} is not a function of --external_plugins "
                          f"({', '.join(plugins) or 'none given'}); known: {', '.join(sorted(user)) or 'none'}")
    return user[name]
