"""Helpers of the web UI tests: a `tailorkit web-ui` process on a free loopback port, and Debian's Chromium
driven by Playwright (never Playwright's own browser download: scripts/setup_browser.sh installs Chromium)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# Flags known to work headless here; without the background-networking ones Chromium keeps calling out to a
# network that refuses it.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """`tailorkit <argv>` (web-ui or app) in the background, its output in ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tailorkit", *argv], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **ENV})


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 240) -> None:
    """Wait until the page answers (the process loads torch and gradio first)."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the UI exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the UI did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def kill_runs(root: Path) -> None:
    """SIGKILL every run process still going under ``root`` (a failed test leaves none behind)."""
    import signal

    from tailorkit.run_files import UI_JOB_FILE
    from tailorkit.ui.jobs import is_alive, load_job

    for path in root.glob(f"*/{UI_JOB_FILE}"):
        job = load_job(path.parent)
        if is_alive(job):
            os.kill(job.pid, signal.SIGKILL)


def stop_ui(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def browser():
    """A Playwright page in Debian's headless Chromium with a new, empty profile."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/setup_browser.sh` (scripts/test.sh does)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=CHROMIUM_FLAGS,
                                                       headless=True, viewport={"width": 1300, "height": 900})
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            yield page
        finally:
            context.close()


@contextlib.contextmanager
def open_web_ui(root: Path, cwd: Path):
    """`tailorkit web-ui --run_root root` in a process of its own, open in the browser; stopped on exit."""
    port, log = free_port(), cwd / "ui.log"
    proc = start_ui(["web-ui", "--run_root", str(root), "--port", str(port)], cwd, log)
    try:
        wait_ready(proc, port, log)
        with browser() as page:
            page.goto(f"http://127.0.0.1:{port}/")
            yield page
    finally:
        stop_ui(proc)


def fill(page, elem_id: str, text: str) -> None:
    """Type into a form field (a gradio text box renders an input or a textarea)."""
    page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)


def chart_points(page, elem_id: str) -> int:
    """How many points the first line of a gradio line plot draws (its SVG path: one M, then an L per point)."""
    line = page.locator(f"#{elem_id} g.mark-line path")
    if line.count() == 0:
        return 0
    d = line.first.get_attribute("d") or ""
    return d.count("L") + 1 if d.startswith("M") else 0


def wait_until(check, timeout: float, what: str, interval: float = 0.5):
    """Poll ``check()`` until it returns something truthy; fail naming ``what``."""
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def status_text(page) -> str:
    return page.inner_text("#run-status")
