"""Paths typed into a form are checked to exist before a run starts, so the error shows in the page, not in a log.

Each field that names something to read is listed here with how it is read; fields that name something to
write (output folders, plots) are listed as outputs. ``tests/ui/test_forms.py`` checks that every field whose
text field is in one of these lists or in NOT_PATHS.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..config.distributed import DEEPSPEED_PRESETS
from ..run_files import LAST

# field -> how its value names what it reads
INPUTS = {
    "model": "model", "ref_model": "model", "reward_model": "model", "value_model": "model", "teacher_model": "model",
    "teacher_adapters": "adapters",
    "dataset": "data", "val_dataset": "data",
    "eval_dataset": "eval_data", "compare": "path",
    "adapters": "adapters", "ckpt_dir": "path",
    "external_plugins": "path", "evalscope_python": "path",
    "deepspeed": "deepspeed", "fsdp_config": "json_file", "resume_from_checkpoint": "resume",
}
OUTPUTS = ("output_dir", "eval_output_dir", "doctor_plot", "result_path", "run_root", "dataset_cache_dir")
# text settings that name no file (the auth file is read by the page's own server, never from a form)
NOT_PATHS = ("model_type", "model_alias", "template", "optim", "optim_args", "system", "format_pattern", "hub_model_id", "hub_token", "init_weights", "loss_type",
             "lr_scheduler_type", "report_to", "reward_funcs", "reward_weights", "stop", "target_modules",
             "target_regex", "modules_to_save", "freeze_parameters", "trainable_parameters", "host", "auth",
             "auth_file", "fsdp", "multi_turn_scheduler")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".gz", ".txt", ".arrow")
_EVAL_LAYOUTS = ("qa", "mcq", "mme", "textvqa", "vqav2")


def check_inputs(settings: dict, cwd: Path) -> list[str]:
    """One message per input path in ``settings`` that does not exist (relative paths are taken from ``cwd``)."""
    problems = []
    for name, how in INPUTS.items():
        value = settings.get(name)
        if value is None or isinstance(value, dict):  # a dict: inline JSON, nothing to find
            continue
        for item in value if isinstance(value, list) else [value]:
            problem = _check(how, str(item), cwd)
            if problem:
                problems.append(f"{name}: {problem}")
    return problems


def _check(how: str, value: str, cwd: Path) -> str | None:
    if how == "data":
        name = value.split("#")[0]
        return None if _exists(name, cwd) or _hub_id(name) else _missing(name, cwd, "file or folder (or a hub id "
                                                                                     "owner/name)")
    if how == "eval_data":
        layout, sep, rest = value.partition(":")
        name = (rest if sep and layout in _EVAL_LAYOUTS else value).split("#")[0]
        return None if _exists(name, cwd) else _missing(name, cwd, "file or folder (eval reads local copies only)")
    if how == "model":
        return None if _exists(value, cwd) or _HUB_ID.match(value) else _missing(value, cwd, "model folder (or a "
                                                                                           "hub id owner/name)")
    if how == "adapters":
        name, sep, path = value.partition("=")
        path = path if sep else value
        return None if _exists(path, cwd) else _missing(path, cwd, "folder of adapters")
    if how == "deepspeed":
        return None if value in DEEPSPEED_PRESETS or _exists(value, cwd) else _missing(
            value, cwd, f"preset ({', '.join(DEEPSPEED_PRESETS)}) or JSON file")
    if how == "json_file":  # a JSON file's path (inline JSON arrives parsed, as a dict, and is not looked for)
        return None if _exists(value, cwd) else _missing(value, cwd, "JSON file (or inline JSON)")
    if how == "resume":
        return None if value == LAST or _exists(value, cwd) else _missing(value, cwd, "checkpoint folder (or "
                                                                          f"'{LAST}')")
    return None if _exists(value, cwd) else _missing(value, cwd, "file or folder")


def _exists(value: str, cwd: Path) -> bool:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else cwd / path).exists()


def _hub_id(value: str) -> bool:
    """owner/name (optionally :subset) without a data file suffix: a hub dataset, not a local path."""
    return bool(_HUB_ID.match(value.split(":")[0])) and not value.lower().endswith(_DATA_SUFFIXES)


def _missing(value: str, cwd: Path, what: str) -> str:
    where = "" if Path(value).is_absolute() else f" (relative to {cwd})"
    return f"{value!r} does not exist{where}; expected a {what}"
