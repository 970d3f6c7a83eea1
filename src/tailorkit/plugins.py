"""``--external_plugins`` (ms-swift's ``--custom_register_path``): Python files that extend a run, one small API.

A plugin file is imported once per run. Its public functions are usable by name as GRPO reward functions
(``--reward_funcs``). It may also define ``register(plugin)``, which receives a ``PluginRegistry``::

    def register(plugin):
        plugin.preprocessor(fix_row)           # fix_row(row: dict) -> dict, every dataset row before parsing
        plugin.template("my_chat", JINJA)      # a chat template, used with --template my_chat
        plugin.loss(my_loss)                   # sft/pt loss: my_loss(logits, labels, num_items) -> scalar
        plugin.callback(MyCallback())          # a transformers.TrainerCallback added to the trainer
        plugin.reward("my_reward", fn)         # a reward function under a name of your choosing

``labels`` of a loss are unshifted (-100 outside the replies; logits[t] predicts labels[t + 1]) and
``num_items`` is the number of supervised tokens of the whole optimizer step (divide by it, as the built-in
loss does, so gradient accumulation and packing leave the update unchanged).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import ConfigError, DataError


@dataclass
class Plugins:
    """What the plugin files of a run provide."""

    functions: dict[str, Callable] = field(default_factory=dict)  # by name: public functions and rewards
    preprocessors: list[tuple[str, Callable]] = field(default_factory=list)  # (plugin file, function), in order
    templates: dict[str, str] = field(default_factory=dict)  # name -> chat template (jinja)
    loss: Callable | None = None
    callbacks: list = field(default_factory=list)

    @property
    def preprocess(self) -> Callable | None:
        """The row preprocessors chained into one ``fn(row, source=, line=) -> row``, or None without any."""
        return self.apply_preprocessors if self.preprocessors else None

    @property
    def preprocess_digest(self) -> str | None:
        """A digest of the files that register row preprocessors, or None without any: part of the encoded-data
        cache key, since what a preprocessor does is known only from its code (a module such a file imports is
        not covered: after editing one, pass --load_from_cache_file false)."""
        if not self.preprocessors:
            return None
        h = hashlib.sha256()
        for origin in sorted({origin for origin, _ in self.preprocessors}):
            h.update(Path(origin).read_bytes())
        return h.hexdigest()

    def apply_preprocessors(self, row, *, source: str | None = None, line: int | None = None):
        """``row`` through every preprocessor in order; a failure is a DataError naming the row."""
        for origin, fn in self.preprocessors:
            name = f"preprocessor {fn.__name__} of {origin}"
            try:
                row = fn(row)
            except DataError as e:
                raise DataError(f"{name}: {e.problem}", source=source, line=line, field=e.field, fix=e.fix) from e
            except Exception as e:  # a user's function: any failure is reported against the row it failed on
                raise DataError(f"{name} failed: {type(e).__name__}: {e}", source=source, line=line) from e
            if not isinstance(row, dict):
                raise DataError(f"{name} returned {type(row).__name__}, not a row dict (every row must come back; "
                                "nothing is dropped silently)", source=source, line=line)
        return row


class PluginRegistry:
    """What ``register(plugin)`` of a plugin file calls; each method records one extension."""

    def __init__(self, plugins: Plugins, origin: str, reserved_templates: frozenset[str] = frozenset()):
        self._plugins, self._origin, self._reserved = plugins, origin, reserved_templates

    def preprocessor(self, fn: Callable[[dict], dict]) -> Callable:
        """Rewrite every dataset row (a dict) before it is parsed; return the row."""
        self._plugins.preprocessors.append((self._origin, _callable(fn, "preprocessor")))
        return fn

    def template(self, name: str, jinja: str) -> None:
        """A chat template under ``name``, chosen with ``--template name``."""
        if not isinstance(jinja, str) or "{" not in jinja:
            raise ConfigError(f"{self._origin}: template {name!r} must be the jinja text of a chat template")
        if name in self._plugins.templates or name in self._reserved:
            raise ConfigError(f"{self._origin}: template name {name!r} is already taken; choose another")
        self._plugins.templates[name] = jinja

    def loss(self, fn: Callable) -> Callable:
        """Replace the sft/pt token loss: ``fn(logits, labels, num_items) -> scalar tensor``."""
        if self._plugins.loss is not None:
            raise ConfigError(f"{self._origin}: a loss is already registered; a run has one")
        self._plugins.loss = _callable(fn, "loss")
        return fn

    def callback(self, callback) -> None:
        """A ``transformers.TrainerCallback`` (instance or class) added to the trainer."""
        self._plugins.callbacks.append(callback() if inspect.isclass(callback) else callback)

    def reward(self, name: str, fn: Callable) -> Callable:
        """A reward function under ``name`` for ``--reward_funcs``."""
        if name in self._plugins.functions:
            raise ConfigError(f"{self._origin}: reward name {name!r} is already taken")
        self._plugins.functions[name] = _callable(fn, "reward")
        return fn


def _callable(fn, what: str) -> Callable:
    if not callable(fn):
        raise ConfigError(f"plugin {what} must be a function, got {type(fn).__name__}")
    return fn


def load_plugins(paths: list[str] | tuple[str, ...], reserved_templates: frozenset[str] = frozenset()) -> Plugins:
    """The plugins of ``paths``: each file imported once (again only when it changes), its ``register`` called
    on a fresh ``Plugins`` (so every run gets its own callback objects)."""
    plugins = Plugins()
    for path in paths:
        module = _import(str(Path(path)), _mtime(path))
        for name, fn in vars(module).items():
            if inspect.isfunction(fn) and not name.startswith("_") and name != "register" \
                    and fn.__module__ == module.__name__:
                plugins.functions[name] = fn
        register = getattr(module, "register", None)
        if callable(register):
            try:
                register(PluginRegistry(plugins, str(path), frozenset(reserved_templates)))
            except ConfigError:
                raise
            except Exception as e:  # a user's file: report any failure with its path
                raise ConfigError(f"external_plugins: {path}: register() failed: {type(e).__name__}: {e}") from e
    return plugins


def _mtime(path: str) -> int:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"external_plugins: {path} does not exist")
    return p.stat().st_mtime_ns


@lru_cache(maxsize=16)
def _import(path: str, mtime: int):
    """The plugin module at ``path`` as of ``mtime`` (the cache key: an edited file is imported again)."""
    p = Path(path)
    spec = importlib.util.spec_from_file_location(f"tailorkit_plugin_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a user's file: report any failure with its path
        raise ConfigError(f"external_plugins: importing {path} failed: {type(e).__name__}: {e}") from e
    return module
