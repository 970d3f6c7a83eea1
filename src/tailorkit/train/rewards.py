"""GRPO reward functions: built-ins under ms-swift's names and user functions from Python files.

A reward function has the signature::

    def my_reward(completions: list[str], **columns) -> list[float | None]

``completions`` are the decoded replies of one training step (each prompt repeated
``--num_generations`` times, in order); ``columns`` holds every other column of the dataset rows
(``solution``, ...), one value per completion, plus ``completion_ids`` (the generated token ids, end of
sequence included) and ``completion_lengths`` (their counts).
``None`` means "does not apply to this sample" and counts as 0 after weighting.
A file passed with ``--external_plugins my_rewards.py`` makes each of its public functions usable by
name in ``--reward_funcs``, and so are the rewards its ``register(plugin)`` names (tailorkit/plugins.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError
from ..plugins import load_plugins as plugin_files

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
    """The functions of the --external_plugins files by name: their public functions and the rewards their
    ``register(plugin)`` names (the one plugin loader, tailorkit/plugins.py)."""
    return plugin_files(paths).functions


@dataclass
class RewardSet:
    """Named reward functions with weights; ``score`` gives per-function and weighted total rewards."""

    names: list[str]
    funcs: list[Callable]
    weights: list[float]

    def score(self, completions: list[str], columns: dict[str, list]) -> tuple[list[float], dict[str, list[float]]]:
        per_func = {}
        for name, fn in zip(self.names, self.funcs):
            values = fn(completions, **columns)
            if len(values) != len(completions):
                raise ConfigError(f"reward function {name} returned {len(values)} values for {len(completions)} "
                                  "completions")
            per_func[name] = [0.0 if v is None else float(v) for v in values]
        total = [sum(w * per_func[n][i] for n, w in zip(self.names, self.weights)) for i in range(len(completions))]
        return total, per_func


def build_rewards(names: list[str], weights: list[str], plugins: list[str], *, format_pattern: str,
                  max_completion_length: int, soft_cache_length: int | None) -> RewardSet:
    """Resolve ``--reward_funcs`` against the built-ins, then the plugin files' functions."""
    if not names:
        raise ConfigError("grpo needs at least one --reward_funcs (accuracy, format, soft_overlong or a function "
                          "from --external_plugins)")
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
        ws = [float(w) for w in weights] if weights else [1.0] * len(names)
    except ValueError:
        raise ConfigError(f"reward_weights must be numbers, got {weights}") from None
    return RewardSet(list(names), funcs, ws)
