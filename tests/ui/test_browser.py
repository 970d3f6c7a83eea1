"""`tailorkit web-ui` in a real headless browser (Debian's Chromium driven by Playwright): start a tiny sft run
from the form, restart the UI while the run goes and find it again, watch its loss chart gain points, stop it,
resume it, and chat with its checkpoint about an image. Screenshots go to the test's tmp folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tailorkit.demo.shapes import write_split
from tailorkit.run_files import FINAL_DIR, LAST, SUMMARY_FILE, UI_JOB_FILE
from ui_helpers import chart_points, fill, kill_runs, open_web_ui, status_text, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def shapes(tmp_path):
    """16 rows of the demo's shapes task (images beside the jsonl)."""
    return write_split(tmp_path / "data", "train", 16, seed=0)


def fill_train_form(page, model: Path, data: Path, max_steps: int) -> None:
    """Fill the Train form as a user would."""
    page.wait_for_selector("#sft-model")
    fill(page, "sft-model", str(model))
    fill(page, "sft-dataset", str(data))
    fill(page, "sft-max_steps", str(max_steps))
    fill(page, "sft-logging_steps", "1")
    fill(page, "sft-learning_rate", "1e-3")
    fill(page, "sft-save_steps", "100000")  # no checkpoint but the one Stop saves and the final one


def press_start(page, expect: str) -> str:
    """Press Start and wait for the message under the form to say ``expect``; returns the message."""
    page.click("#sft-start")
    return wait_until(lambda: expect in (text := page.inner_text("#sft-message")) and text, 60, f"'{expect}'")


def loss_points_grow(page, timeout: float) -> tuple[int, int]:
    """Wait for the loss chart to draw points, then for it to draw more (the page refreshes every 2 s)."""
    first = wait_until(lambda: chart_points(page, "chart-loss"), timeout, "the loss chart's first points")
    later = wait_until(lambda: (n := chart_points(page, "chart-loss")) > first and n, 60, "more loss points")
    return first, later


def test_train_restart_watch_stop_resume_and_chat_in_a_browser(tiny_vl_dir, shapes, tmp_path):
    root, steps = tmp_path / "runs", 600
    try:
        with open_web_ui(root, tmp_path) as page:
            fill_train_form(page, tiny_vl_dir, shapes.parent / "missing.jsonl", max_steps=steps)
            refused = press_start(page, "error")  # a typed path that does not exist: said in the page
            assert "missing.jsonl' does not exist" in refused and not list(root.glob(f"*/{UI_JOB_FILE}"))
            fill(page, "sft-dataset", str(shapes))
            name = press_start(page, "started").split("started", 1)[1].strip()
            run = root / name
            wait_until(lambda: name in status_text(page) and "running" in status_text(page), 30, "Runs to show it")
        # the UI that started the run is gone (the run is still loading its model): the run goes on
        os.kill(json.loads((run / UI_JOB_FILE).read_text())["pid"], 0)

        with open_web_ui(root, tmp_path) as page:  # a new UI process finds the run again from its files
            page.get_by_role("tab", name="Runs").click()
            assert "running" in wait_until(lambda: name in status_text(page) and status_text(page), 60,
                                            "the restarted UI to find the run")
            first, later = loss_points_grow(page, 240)
            page.screenshot(path=tmp_path / "1-live-chart.png", full_page=True)
            assert later > first

            page.click("#run-stop")
            wait_until(lambda: "stopped" in status_text(page), 120, "the run to stop")
            assert (run / LAST).is_symlink(), "Stop must leave a checkpoint to resume from"
            assert 0 < json.loads((run / SUMMARY_FILE).read_text())["steps"] < steps
            page.screenshot(path=tmp_path / "2-stopped.png", full_page=True)

            page.click("#run-resume")
            wait_until(lambda: "running" in status_text(page), 30, "the run to resume")
            wait_until(lambda: "finished" in status_text(page), 400, "the resumed run to finish", interval=2)
            summary = json.loads((run / SUMMARY_FILE).read_text())
            assert summary["status"] == "completed" and summary["steps"] == steps
            assert "--resume_from_checkpoint last" in page.input_value("#run-command textarea, #run-command input")
            page.screenshot(path=tmp_path / "3-finished.png", full_page=True)

            chat_with_image(page, run / FINAL_DIR, shapes.parent / "images" / "train_00000.png", root)
            page.screenshot(path=tmp_path / "4-chat.png", full_page=True)
    finally:
        kill_runs(root)
    assert len(list(tmp_path.glob("*.png"))) == 4, "screenshots are saved in the test's folder"


def chat_with_image(page, checkpoint: Path, image: Path, root: Path) -> None:
    """Load the checkpoint in the Chat tab, send a question with an image, and get a streamed reply."""
    page.get_by_role("tab", name="Chat").click()
    page.click("#chat-pick input")  # the picker lists the runs' checkpoints when it opens
    page.get_by_role("option", name=str(checkpoint)).click()
    wait_until(lambda: page.input_value("#chat-ckpt_dir textarea, #chat-ckpt_dir input") == str(checkpoint), 30,
               "the picked checkpoint in ckpt_dir")
    fill(page, "chat-max_new_tokens", "8")
    page.click("#chat-load")
    wait_until(lambda: "loaded:" in page.inner_text("#chat-status"), 120, "the checkpoint to load")
    page.set_input_files("#chat-box input[type=file]", str(image))
    wait_until(lambda: page.locator("#chat-box img").count(), 30, "the image to upload")
    page.locator("#chat-box textarea").fill("What colour is the shape?")
    page.locator("#chat-box textarea").press("Enter")
    bot = page.locator("#chat-bot")
    wait_until(lambda: bot.locator("img").count() >= 1, 60, "the image in the conversation")
    reply = wait_until(lambda: _assistant_text(page), 120, "a reply")
    assert reply.strip()
    page.locator("#chat-box textarea").fill("What shape is this?")  # a second turn, about the same image
    page.locator("#chat-box textarea").press("Enter")
    wait_until(lambda: page.locator("#chat-bot .bot").count() == 2 and _assistant_text(page), 120, "a second reply")
    assert list((root / "uploads").rglob(image.name)), "uploads are stored under the run root"


def _assistant_text(page) -> str:
    bots = page.locator("#chat-bot .bot")
    return bots.last.inner_text().strip() if bots.count() else ""
