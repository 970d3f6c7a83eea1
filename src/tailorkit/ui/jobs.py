"""Runs started from the page: separate `tailorkit` CLI processes, found again from their files after a restart.

A job is a folder under the run root holding ``ui_run.json`` (verb, settings file, working folder, process id
and start time, stop requests), ``ui_args.yaml`` (the form's settings: the process is `tailorkit <verb>
ui_args.yaml`), ``ui_run.log`` (what it printed) and ``ui_exit.json`` (its exit status). The process runs
in a session of its own, so closing the page or stopping the UI never stops it. Status is read from the
files and the process table: running, finished, stopped or failed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..run_files import (CONFIG_FILE, LAST, LOG_FILE, SUMMARY_FILE, UI_ARGS_FILE, UI_EXIT_FILE, UI_JOB_FILE,
                         UI_LOG_FILE)
from .forms import to_yaml

TRAIN_VERBS = ("sft", "pt", "rlhf")
OUTPUT_SETTING = {"sft": "output_dir", "pt": "output_dir", "rlhf": "output_dir", "eval": "eval_output_dir",
                  "export": "output_dir"}
SECRETS = {"hub_token": "HF_TOKEN"}  # never written into a file: handed to the process in its standard variable


@dataclass
class Job:
    """What ``ui_run.json`` holds."""

    verb: str
    folder: str  # the job's files
    output: str  # where the verb writes (a training run's output_dir is the job folder unless typed elsewhere)
    cwd: str  # relative paths of the settings are taken from here
    pid: int | None = None
    proc_start: str | None = None  # the process's start time in the process table (guards against pid reuse)
    started: float = 0.0
    stop_requested: float | None = None
    starts: int = 0  # 1, then +1 per resume
    external: bool = False  # a training run started from the command line into the run root (shown read-only)
    name: str = field(default="", init=False)

    def __post_init__(self):
        self.name = Path(self.folder).name

    @property
    def args_file(self) -> Path:
        return Path(self.folder) / UI_ARGS_FILE

    def command(self, resume: bool = False) -> list[str]:
        """The CLI command the process runs (what a user copies)."""
        return ["tailorkit", self.verb, str(self.args_file)] + (["--resume_from_checkpoint", LAST] if resume else [])


def plan_job(root: Path, verb: str, settings: dict) -> tuple[Path, dict]:
    """(job folder, settings with the verb's output path resolved under the run root)."""
    key = OUTPUT_SETTING[verb]
    settings = dict(settings)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{verb}"
    typed = settings.get(key)
    if typed is None and verb != "export":  # left at its default: a new folder per run
        folder = _new_folder(root, stamp)
        settings[key] = str(folder)
        return folder, settings
    if verb == "export":
        folder = _new_folder(root, stamp)
        settings[key] = str(folder / "model") if not typed else str(_under(root, typed))
        return folder, settings
    output = _under(root, typed)
    if verb in TRAIN_VERBS and output.parent != root:
        raise ConfigError(f"{key}: {output} is not a folder directly inside the run root {root}; the page finds its "
                          "runs there (give a name, e.g. 'my-run')")
    settings[key] = str(output)
    return (output if output.parent == root else _new_folder(root, stamp)), settings


def _under(root: Path, typed: str) -> Path:
    path = Path(typed).expanduser()
    return path if path.is_absolute() else root / path


def _new_folder(root: Path, stamp: str) -> Path:
    folder, k = root / stamp, 1
    while folder.exists():
        k += 1
        folder = root / f"{stamp}-{k}"
    return folder


def start_job(root: Path, verb: str, settings: dict, cwd: Path) -> Job:
    """Write the settings file and start `tailorkit <verb>` on it in its own session; returns the job."""
    folder, settings = plan_job(root, verb, settings)
    if (folder / UI_JOB_FILE).exists() or (folder / CONFIG_FILE).exists():
        raise ConfigError(f"{folder} already holds a run; choose another name (or resume that run in Runs)")
    folder.mkdir(parents=True, exist_ok=True)
    settings, env = split_secrets(settings)
    (folder / UI_ARGS_FILE).write_text(to_yaml(settings))
    job = Job(verb=verb, folder=str(folder), output=settings[OUTPUT_SETTING[verb]], cwd=str(cwd))
    _spawn(job, resume=False, env=env)
    return job


def split_secrets(settings: dict) -> tuple[dict, dict]:
    """(settings without secrets, environment variables carrying them)."""
    env = {SECRETS[k]: str(v) for k, v in settings.items() if k in SECRETS and v}
    return {k: v for k, v in settings.items() if k not in SECRETS}, env


_children: dict[int, subprocess.Popen] = {}  # processes this UI started: polled so that none stays a zombie


def _spawn(job: Job, resume: bool, env: dict | None = None) -> None:
    folder = Path(job.folder)
    (folder / UI_EXIT_FILE).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "tailorkit.ui.child", str(folder), *job.command(resume)[1:]]
    with open(folder / UI_LOG_FILE, "a", encoding="utf-8") as log:
        log.write(f"[tailorkit web-ui] {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(job.command(resume))}\n")
        log.flush()
        # a session of its own: Ctrl-C in the UI's terminal, closing it or stopping the UI never reaches the run
        proc = subprocess.Popen(argv, cwd=job.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    _children[proc.pid] = proc
    job.pid, job.proc_start, job.started = proc.pid, process_start(proc.pid), time.time()
    job.stop_requested, job.starts = None, job.starts + 1
    save_job(job)


def save_job(job: Job) -> None:
    data = asdict(job)
    data.pop("name")
    tmp = Path(job.folder) / f".{UI_JOB_FILE}.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(Path(job.folder) / UI_JOB_FILE)  # a reader never sees half a file


def load_job(folder: Path) -> Job:
    data = json.loads((folder / UI_JOB_FILE).read_text())
    data["folder"] = str(folder)  # the root may have moved since
    return Job(**data)


def process_start(pid: int) -> str | None:
    """The process's start time from /proc (None where there is no /proc): a reused pid has another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def is_alive(job: Job) -> bool:
    """Whether the job's process still runs (a zombie or a reused pid does not count)."""
    if job.pid is None:
        return False
    child = _children.get(job.pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        state = Path(f"/proc/{job.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        state = None
        if not Path("/proc/self/stat").exists():  # no /proc: ask the kernel
            try:
                os.kill(job.pid, 0)
                return True
            except OSError:
                return False
        return False
    return state != "Z" and (job.proc_start is None or process_start(job.pid) == job.proc_start)


def stop_job(job: Job) -> str:
    """SIGTERM: a training run saves a checkpoint after its current step and stops; other verbs stop at once."""
    if job.external:
        raise ConfigError(f"{job.name} was started outside this page: stop it where it runs (Ctrl-C, or SIGTERM "
                          "to its process), it saves a checkpoint as it stops")
    if not is_alive(job):
        return f"{job.name} is not running"
    os.kill(job.pid, signal.SIGTERM)
    job.stop_requested = time.time()
    save_job(job)
    what = "saves a checkpoint after the current step, then stops" if job.verb in TRAIN_VERBS else "stops"
    return f"sent SIGTERM to {job.name} (pid {job.pid}): it {what}"


def resume_job(job: Job) -> str:
    """Start a stopped or failed training run again from its newest complete checkpoint."""
    if job.external:
        raise ConfigError(f"{job.name} was started outside this page: resume it the same way, e.g. `tailorkit sft "
                          f"{Path(job.folder) / CONFIG_FILE} --resume_from_checkpoint {LAST}`")
    if job.verb not in TRAIN_VERBS:
        raise ConfigError(f"{job.name} is a `{job.verb}` job: only training runs resume")
    if is_alive(job):
        raise ConfigError(f"{job.name} is still running")
    if not (Path(job.output) / LAST).exists():
        raise ConfigError(f"{job.name} has no complete checkpoint to resume from yet (no {Path(job.output) / LAST})")
    _spawn(job, resume=True)
    return f"resumed {job.name}: {' '.join(job.command(resume=True))}"


@dataclass
class JobStatus:
    job: Job
    status: str  # running | finished | stopped | failed
    reason: str = ""  # why it failed or stopped


def job_status(job: Job) -> JobStatus:
    """Running while the process lives; after: finished (exit 0), stopped (asked to) or failed (with the reason)."""
    if is_alive(job):
        return JobStatus(job, "running")
    folder = Path(job.folder)
    exit_file = folder / UI_EXIT_FILE
    code = json.loads(exit_file.read_text()).get("returncode") if exit_file.is_file() else None
    if code == 0:
        return JobStatus(job, "finished")
    summary = _read_json(Path(job.output) / SUMMARY_FILE)
    if job.stop_requested or str(summary.get("status", "")).startswith("stopped"):
        return JobStatus(job, "stopped", summary.get("status", "stopped by SIGTERM"))
    return JobStatus(job, "failed", failure_reason(folder / UI_LOG_FILE, code))


def failure_reason(log: Path, code: int | None) -> str:
    """The CLI's 'error: ...' line, else the last line printed, with the exit status."""
    lines = [x for x in tail_lines(log, 200) if x.strip()]
    errors = [x for x in lines if x.startswith("error:") or "Error" in x.split(":")[0]]
    last = (errors or lines or ["(no output)"])[-1]
    ended = f"exit status {code}" if code is not None else "ended without an exit status (killed)"
    return f"{ended}: {last}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def list_jobs(root: Path) -> list[JobStatus]:
    """Every job under the run root, and every training run written there from the command line; newest first."""
    if not root.is_dir():
        return []
    found = []
    for folder in (p for p in root.iterdir() if p.is_dir()):
        if (folder / UI_JOB_FILE).is_file():
            found.append(_read_job(folder))
        elif (folder / CONFIG_FILE).is_file():
            found.append(outside_run(folder))
    return sorted(found, key=lambda s: s.job.started, reverse=True)


def _read_job(folder: Path) -> JobStatus:
    try:
        return job_status(load_job(folder))
    except (OSError, ValueError, TypeError) as e:  # shown as a failed row, not dropped from the list
        job = Job(verb="?", folder=str(folder), output=str(folder), cwd="")
        return JobStatus(job, "failed", f"{folder / UI_JOB_FILE} is unreadable: {e}")


def outside_run(folder: Path) -> JobStatus:
    """A training run started from the command line into the run root: its status from its run summary."""
    import yaml

    settings = yaml.safe_load((folder / CONFIG_FILE).read_text()) or {}
    job = Job(verb="rlhf" if "rlhf_type" in settings else "sft/pt", folder=str(folder), output=str(folder), cwd="",
              started=(folder / CONFIG_FILE).stat().st_mtime, external=True)
    status = _read_json(folder / SUMMARY_FILE).get("status")
    if status is None:
        return JobStatus(job, "unknown", "started outside this page; no run summary yet (running, or killed)")
    kind = "finished" if status == "completed" else "stopped" if status.startswith("stopped") else "failed"
    return JobStatus(job, kind, "" if kind == "finished" else status)


def run_checkpoints(root: Path) -> list[str]:
    """Every published checkpoint folder of the runs under the root (checkpoint-final and checkpoint-N)."""
    if not root.is_dir():
        return []
    return [str(p) for run in sorted(root.iterdir()) if run.is_dir()
            for p in sorted(run.glob("checkpoint-*")) if p.is_dir()]


def is_training(job: Job) -> bool:
    return job.verb in TRAIN_VERBS or job.external


def last_step(output: Path) -> int | None:
    """The step of the newest record of logging.jsonl (read from its end: the file grows with the run)."""
    for line in reversed(tail_lines(output / LOG_FILE, 5)):
        try:
            step = json.loads(line).get("step")
        except json.JSONDecodeError:
            continue  # the line being written, or the cut start of the tail
        if step is not None:
            return step
    return None


def tail_lines(path: Path, n: int, max_bytes: int = 65536) -> list[str]:
    """The last ``n`` lines of a log; a progress bar's carriage-return updates show as their latest state."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")][-n:]


def log_rows(output: Path) -> list[dict]:
    """The records of a run's logging.jsonl; a line still being written is left for the next read."""
    try:
        text = (output / LOG_FILE).read_text(encoding="utf-8")
    except OSError:
        return []
    lines = text.split("\n")[:-1]  # after the last newline: nothing, or the writer's unfinished line
    rows = []
    for k, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{output / LOG_FILE}:{k}: not a JSON record ({e})") from None
    return rows
