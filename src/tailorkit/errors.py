"""Exception types of tailorkit: each names what is wrong and how to fix it."""

from __future__ import annotations


class TailorkitError(Exception):
    """Base class of every error tailorkit raises on purpose."""


class ConfigError(TailorkitError, ValueError):
    """A setting is unknown, conflicting or cannot be applied on this machine."""


class DataError(TailorkitError, ValueError):
    """A dataset row is unusable; the message names file, line, field and a fix."""

    def __init__(self, problem: str, *, source: str | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None):
        self.problem, self.source, self.line, self.field, self.fix = problem, source, line, field, fix
        where = source or "<data>"
        if line is not None:
            where += f":{line}"
        text = f"{where}: " + (f"{field}: " if field else "") + problem
        if fix:
            text += f" ({fix})"
        super().__init__(text)


class ModelError(TailorkitError, ValueError):
    """The model cannot be loaded or is not usable as asked."""


class TooLongError(DataError):
    """A sample's encoded length exceeds --max_length."""


class CheckpointError(TailorkitError, OSError):
    """A checkpoint cannot be written or read; the previous complete checkpoint is left intact."""


class GenerationError(TailorkitError, RuntimeError):
    """One request's generation failed (e.g. non-finite scores); the other requests of its batch go on."""


class TrainingStopped(TailorkitError):
    """Training stopped early (a signal or a fatal alarm) after keeping its last good checkpoint."""
