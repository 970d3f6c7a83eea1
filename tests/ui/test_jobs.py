"""Runs started from the page are `tailorkit` CLI processes of their own: the same args.yaml as the CLI command,
found again from their files, with their status (running, finished, stopped, failed) read from files and the
process table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from helpers import text_chat_rows, write_jsonl
from tailorkit.cli import main as cli_main
from tailorkit.config.train import SftConfig
from tailorkit.errors import ConfigError
from tailorkit.run_files import CONFIG_FILE, LOG_FILE, SUMMARY_FILE, UI_ARGS_FILE, UI_EXIT_FILE, UI_JOB_FILE, UI_LOG_FILE
from tailorkit.ui import jobs
from tailorkit.ui.forms import form_fields, settings_from_widgets, widgets_from_settings
from tailorkit.ui.jobs import Job, job_status, list_jobs, plan_job, save_job, split_secrets, start_job


@pytest.mark.slow
def test_a_run_started_from_the_form_gets_the_args_yaml_of_the_same_cli_command(tiny_text_dir, tmp_path):
    data = write_jsonl(tmp_path / "chat data.jsonl", text_chat_rows(4))
    root, out = tmp_path / "runs", tmp_path / "runs" / "run"
    argv = ["sft", "--model", str(tiny_text_dir), "--dataset", str(data), "--max_steps", "2", "--lora_rank", "4",
            "--learning_rate", "2e-4", "--logging_steps", "1", "--target_modules", "q_proj", "v_proj",
            "--torch_dtype", "float32", "--output_dir", str(out)]
    assert cli_main(argv) == 0
    cli_yaml = (out / CONFIG_FILE).read_text()
    shutil.rmtree(out)

    # what a user types into the form: the same settings, as text
    typed = {"model": str(tiny_text_dir), "dataset": str(data), "max_steps": "2", "lora_rank": "4",
             "learning_rate": "2e-4", "logging_steps": "1", "target_modules": "q_proj\nv_proj",
             "torch_dtype": "float32", "output_dir": str(out)}
    fields = form_fields(SftConfig)
    values = widgets_from_settings(fields, {})
    for name, text in typed.items():
        values[[f.name for f in fields].index(name)] = text
    job = start_job(root, "sft", settings_from_widgets(fields, values), tmp_path)
    assert job.folder == str(out)
    wait_for_status(job, "finished", 300)
    assert (out / CONFIG_FILE).read_text() == cli_yaml
    assert (out / UI_ARGS_FILE).is_file() and "tailorkit sft" in (out / UI_LOG_FILE).read_text()


def wait_for_status(job: Job, status: str, timeout: float):
    end = time.time() + timeout
    while time.time() < end:
        current = job_status(jobs.load_job(jobs.Path(job.folder)))
        if current.status == status:
            return current
        if current.status not in ("running",):
            raise AssertionError(f"{job.name} is {current.status}: {current.reason}\n"
                                 f"{(jobs.Path(job.folder) / UI_LOG_FILE).read_text()[-3000:]}")
        time.sleep(1)
    raise AssertionError(f"{job.name} not {status} after {timeout}s")


def fake_job(root, name, **kw) -> Job:
    folder = root / name
    folder.mkdir(parents=True)
    job = Job(verb="sft", folder=str(folder), output=str(folder), cwd=str(root), started=time.time(), **kw)
    save_job(job)
    return job


def test_status_is_read_from_the_files_of_a_finished_process(tmp_path):
    fake_job(tmp_path, "done", pid=None)
    (tmp_path / "done" / UI_EXIT_FILE).write_text(json.dumps({"returncode": 0}))
    fake_job(tmp_path, "stopped")
    (tmp_path / "stopped" / UI_EXIT_FILE).write_text(json.dumps({"returncode": 2}))
    (tmp_path / "stopped" / SUMMARY_FILE).write_text(json.dumps({"status": "stopped by SIGTERM"}))
    fake_job(tmp_path, "failed")
    (tmp_path / "failed" / UI_EXIT_FILE).write_text(json.dumps({"returncode": 2}))
    (tmp_path / "failed" / UI_LOG_FILE).write_text("loading\nerror: data.jsonl:3: messages: missing\n\r")
    fake_job(tmp_path, "killed", stop_requested=time.time())
    fake_job(tmp_path, "crashed")
    got = {s.job.name: (s.status, s.reason) for s in list_jobs(tmp_path)}
    assert got["done"] == ("finished", "")
    assert got["stopped"] == ("stopped", "stopped by SIGTERM")
    assert got["failed"] == ("failed", "exit status 2: error: data.jsonl:3: messages: missing")
    assert got["killed"][0] == "stopped"
    assert got["crashed"][0] == "failed" and "without an exit status" in got["crashed"][1]
    assert [s.job.name for s in list_jobs(tmp_path)][0] == "crashed"  # newest first


def test_runs_written_from_the_command_line_and_damaged_job_files_are_listed_too(tmp_path):
    cli_run = tmp_path / "from-cli"
    cli_run.mkdir()
    (cli_run / CONFIG_FILE).write_text("model: m\nrlhf_type: dpo\n")
    (cli_run / SUMMARY_FILE).write_text(json.dumps({"status": "completed"}))
    (cli_run / LOG_FILE).write_text('{"step": 1, "loss": 2}\n{"step": 7, "loss": 1}\n{"step": 8, "lo')
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / UI_JOB_FILE).write_text("{not json")
    got = {s.job.name: s for s in list_jobs(tmp_path)}
    assert (got["from-cli"].job.verb, got["from-cli"].status, got["from-cli"].job.external) == ("rlhf", "finished",
                                                                                                True)
    assert jobs.last_step(cli_run) == 7
    assert got["broken"].status == "failed" and "unreadable" in got["broken"].reason
    with pytest.raises(ConfigError, match="started outside this page"):
        jobs.stop_job(got["from-cli"].job)


def test_a_live_process_is_running_and_a_reused_pid_is_not(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        job = fake_job(tmp_path, "live", pid=proc.pid, proc_start=jobs.process_start(proc.pid))
        assert job_status(job).status == "running"
        job.proc_start = "1"  # another process that got the same pid
        assert job_status(job).status == "failed"
    finally:
        proc.kill()
        proc.wait()
    job.proc_start = jobs.process_start(proc.pid)
    assert not jobs.is_alive(job)


def test_runs_go_in_a_folder_of_the_run_root(tmp_path):
    folder, settings = plan_job(tmp_path, "sft", {"model": "m"})
    assert folder.parent == tmp_path and settings["output_dir"] == str(folder)
    folder, settings = plan_job(tmp_path, "sft", {"output_dir": "named"})
    assert folder == tmp_path / "named" and settings["output_dir"] == str(folder)
    with pytest.raises(ConfigError, match="not a folder directly inside the run root"):
        plan_job(tmp_path, "sft", {"output_dir": str(tmp_path.parent / "elsewhere")})
    folder, settings = plan_job(tmp_path, "export", {})
    assert settings["output_dir"] == str(folder / "model")
    folder, settings = plan_job(tmp_path, "eval", {})
    assert settings["eval_output_dir"] == str(folder)


def test_a_hub_token_is_never_written_into_the_settings_file():
    settings, env = split_secrets({"hub_token": "hf_secret", "push_to_hub": True})
    assert settings == {"push_to_hub": True} and env == {"HF_TOKEN": "hf_secret"}


@pytest.mark.slow
def test_a_bad_setting_fails_in_the_process_and_shows_as_failed(tmp_path):
    job = start_job(tmp_path, "sft", {"model": "m", "dataset": ["missing.jsonl"]}, tmp_path)
    status = wait_for_status_end(job, 180)
    assert status.status == "failed" and "missing.jsonl" in status.reason
    assert json.loads((tmp_path / job.name / UI_EXIT_FILE).read_text())["returncode"] == 2
    assert json.loads((tmp_path / job.name / UI_JOB_FILE).read_text())["pid"] == job.pid


def wait_for_status_end(job: Job, timeout: float):
    end = time.time() + timeout
    while time.time() < end:
        current = job_status(jobs.load_job(jobs.Path(job.folder)))
        if current.status != "running":
            return current
        time.sleep(1)
    raise AssertionError(f"{job.name} still running after {timeout}s")


@pytest.mark.slow
def test_evaluate_and_export_forms_run_their_verbs_at_the_same_time(tiny_vl_dir, tiny_vl_adapters, tmp_path):
    from tailorkit.config.eval import EvalConfig
    from tailorkit.config.export import ExportConfig
    from tailorkit.demo.shapes import write_split
    from tailorkit.ui.form_tab import Context, start_from_form
    from tailorkit.ui.metrics import job_report

    data = write_split(tmp_path / "data", "heldout", 3, seed=1)
    ctx = Context(root=tmp_path / "runs", cwd=tmp_path)
    started = []
    for verb, cls, typed in [
            ("eval", EvalConfig, {"model": str(tiny_vl_dir), "adapters": str(tiny_vl_adapters["alpha"]),
                                  "eval_dataset": f"qa:{data.relative_to(tmp_path)}", "max_new_tokens": "2",
                                  "torch_dtype": "float32"}),
            ("export", ExportConfig, {"model": str(tiny_vl_dir), "adapters": str(tiny_vl_adapters["alpha"]),
                                      "merge_lora": True, "torch_dtype": "float32", "verify_n_samples": "2"})]:
        fields = form_fields(cls)
        values = widgets_from_settings(fields, {})
        for name, text in typed.items():
            values[[f.name for f in fields].index(name)] = text
        started.append(start_from_form(ctx, cls, fields, verb, values))
    assert all(s.status == "running" for s in map(job_status, started)), "both go at once"
    for job in started:
        wait_for_status(job, "finished", 400)
    evaluated, exported = (job_report(j.verb, jobs.Path(j.output)) for j in started)
    assert "exact_match" in json.dumps(evaluated["metrics"])
    assert exported is not None and (jobs.Path(started[1].output) / "config.json").is_file()


def test_a_form_with_a_missing_path_starts_nothing(tmp_path):
    from tailorkit.ui.form_tab import Context, start_from_form

    fields = form_fields(SftConfig)
    values = widgets_from_settings(fields, {"model": "tiny-vl", "dataset": ["nowhere.jsonl"]})
    with pytest.raises(Exception, match="model: 'tiny-vl' does not exist.*dataset: 'nowhere.jsonl' does not exist"):
        start_from_form(Context(root=tmp_path / "runs", cwd=tmp_path), SftConfig, fields, "sft", values)
    assert list_jobs(tmp_path / "runs") == []
