"""The Runs tab: every job under the run root with its status; for the one selected, its command line, live
charts, log tail, trainability table or report, and Stop / Resume. Refreshed from the files every few seconds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..errors import TailorkitError
from ..run_files import UI_LOG_FILE
from .forms import shell_command
from .jobs import JobStatus, is_training, last_step, list_jobs, log_rows, resume_job, stop_job, tail_lines
from .metrics import (ALWAYS_SHOWN, CHARTS, TRAINABILITY_HEADERS, chart_frame, chart_points, job_report,
                      trainability_rows)
from .widgets import error_text, escape

REFRESH_SECONDS = 2.0
LOG_LINES = 14
TABLE_HEADERS = ["run", "verb", "status", "step", "started", "folder"]


@dataclass
class RunsTab:
    select: gr.Dropdown
    outputs: list  # what ``refresh`` returns, in order


def runs_tab(root: Path) -> RunsTab:
    """Render the tab and connect its timer, selector and buttons."""
    gr.Markdown(f"Runs under `{root}` (started here or found again after a restart).")
    table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, elem_id="runs-table", wrap=True)
    with gr.Row():
        select = gr.Dropdown(label="run", choices=[], elem_id="run-select", allow_custom_value=True, scale=3)
        stop = gr.Button("Stop (save a checkpoint, then stop)", variant="stop", elem_id="run-stop", scale=1)
        resume = gr.Button("Resume from the last checkpoint", elem_id="run-resume", scale=1)
    status = gr.Markdown(elem_id="run-status")
    command = gr.Textbox(label="command line (copy it to run the same from a shell)", elem_id="run-command",
                         interactive=False, buttons=["copy"])
    message = gr.Markdown(elem_id="run-message")
    plots = []
    with gr.Row(elem_id="run-charts"):
        for name in CHARTS:
            plots.append(gr.LinePlot(None, x="step", y="value", color="series", label=name, x_title="step",
                                     y_title=name, elem_id=f"chart-{name.split()[0]}", min_width=320,
                                     visible=name in ALWAYS_SHOWN,
                                     y_axis_format=".3~e" if name == "learning rate" else None))
    log = gr.Textbox(label="log (last lines)", lines=LOG_LINES, max_lines=LOG_LINES, elem_id="run-log",
                     interactive=False)
    plan = gr.Dataframe(headers=TRAINABILITY_HEADERS, label="trainability (before step 1)", interactive=False,
                        elem_id="run-plan")
    report = gr.JSON(label="report", visible=False, elem_id="run-report")
    outputs = [table, select, status, command, *plots, log, plan, report]
    timer = gr.Timer(REFRESH_SECONDS)
    timer.tick(lambda chosen: refresh(root, chosen), select, outputs, show_progress="hidden")
    select.change(lambda chosen: refresh(root, chosen), select, outputs, show_progress="hidden")
    stop.click(lambda chosen: act(root, chosen, stop_job), select, message)
    resume.click(lambda chosen: act(root, chosen, resume_job), select, message)
    return RunsTab(select=select, outputs=outputs)


def pick(jobs: list[JobStatus], chosen: str | None) -> JobStatus | None:
    """The chosen job, else the newest running one, else the newest."""
    by_name = {j.job.name: j for j in jobs}
    if chosen in by_name:
        return by_name[chosen]
    running = [j for j in jobs if j.status == "running"]
    return (running or jobs or [None])[0]


def refresh(root: Path, chosen: str | None) -> list:
    """Every output of the tab, read again from the files."""
    jobs = list_jobs(root)
    current = pick(jobs, chosen)
    rows = [[j.job.name, j.job.verb, j.status, _last_step(j), time.strftime("%m-%d %H:%M:%S",
                                                                             time.localtime(j.job.started)),
             j.job.folder] for j in jobs]
    select = gr.update(choices=[j.job.name for j in jobs], value=current.job.name if current else None)
    if current is None:
        empty = [_chart(name, []) for name in CHARTS]
        return [rows, select, "no runs yet: start one from Train, RLHF, Evaluate or Export", "", *empty, "", [],
                gr.update(visible=False)]
    job, output = current.job, Path(current.job.output)
    text = f"**{escape(job.name)}**: {current.status}" + (f" ({escape(current.reason)})" if current.reason else "")
    try:
        points = chart_points(log_rows(output)) if is_training(job) else {name: [] for name in CHARTS}
    except TailorkitError as e:  # a damaged logging.jsonl: said in the page, the rest still shows
        points, text = {name: [] for name in CHARTS}, f"{text}; {error_text(e)}"
    command = "" if job.external else shell_command(job.command(resume=job.starts > 1)) + f"    # in {job.cwd}"
    report = job_report(job.verb, output)
    return [rows, select, text, command, *(_chart(name, points[name]) for name in CHARTS),
            "\n".join(tail_lines(Path(job.folder) / UI_LOG_FILE, LOG_LINES)), trainability_rows(output),
            gr.update(value=report, visible=report is not None)]


def _chart(name: str, points: list):
    return gr.update(value=chart_frame(points), visible=name in ALWAYS_SHOWN or bool(points))


def _last_step(status: JobStatus) -> str:
    step = last_step(Path(status.job.output)) if is_training(status.job) else None
    return "" if step is None else str(step)


def act(root: Path, chosen: str | None, action) -> str:
    """Stop or resume the chosen job; the message (or error) for the page."""
    current = pick(list_jobs(root), chosen)
    if current is None or current.job.name != chosen:
        return error_text(f"no run named {chosen!r} under {root}")
    try:
        return escape(action(current.job))
    except TailorkitError as e:
        return error_text(e)
