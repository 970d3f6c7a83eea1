"""The chat of the pages: prompts built like training rows (images before the text), replies streamed by the
infer engine and equal to its whole reply; `tailorkit app` chats in a browser, several turns, with an image."""

from __future__ import annotations

import random

import pytest

from tailorkit.config.infer import EngineArgs, GenerationArgs
from tailorkit.config.train import ModelArgs
from tailorkit.config.ui import AppConfig, PageArgs
from tailorkit.demo.shapes import draw
from tailorkit.errors import TailorkitError
from tailorkit.infer.engine import GenerationSettings
from tailorkit.ui.chat import ChatModel, conversation_row, stream_reply
from ui_helpers import browser, free_port, wait_until


def test_images_go_before_the_text_of_their_turn_in_order():
    turns = [{"role": "user", "content": "What colour?", "images": ["a.png"]},
             {"role": "assistant", "content": "red"},
             {"role": "user", "content": "And these?", "images": ["b.png", "c.png"]}]
    row = conversation_row(turns, system="Be brief.")
    assert row["images"] == ["a.png", "b.png", "c.png"]
    assert [m["content"] for m in row["messages"]] == ["Be brief.", "<image>What colour?", "red",
                                                      "<image><image>And these?"]


@pytest.fixture(scope="module")
def tiny_chat(tiny_vl_dir):
    chat = ChatModel()
    chat.load(ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32"), EngineArgs())
    return chat


def test_the_reply_streams_and_equals_the_engines_whole_reply(tiny_chat, tmp_path):
    image = tmp_path / "shape.png"
    draw("red", "circle", random.Random(0)).save(image)
    turns = [{"role": "user", "content": "What colour is the shape?", "images": [str(image)]}]
    generation = GenerationArgs(max_new_tokens=12)
    steps = list(stream_reply(tiny_chat, turns, generation))
    assert len(steps) > 2, "the reply arrives in pieces"
    assert all(b.startswith(a) for a, b in zip(steps, steps[1:]))
    whole = tiny_chat.engine.generate([conversation_for(turns)], GenerationSettings(max_new_tokens=12))[0]
    assert steps[-1].strip() == whole


def conversation_for(turns):
    from tailorkit.data.formats import parse_row

    return parse_row(conversation_row(turns, None), source="chat", need_reply=False)


def test_chatting_before_a_model_is_loaded_says_what_to_do():
    with pytest.raises(TailorkitError, match="press Load"):
        list(stream_reply(ChatModel(), [{"role": "user", "content": "hi"}], GenerationArgs()))


@pytest.mark.slow
def test_app_chats_several_turns_with_an_image_in_a_browser(tiny_vl_dir, tmp_path, monkeypatch):
    from tailorkit.ui.server import app

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "restored-after-the-test"))
    image = tmp_path / "shape.png"
    draw("blue", "square", random.Random(1)).save(image)
    port = free_port()
    cfg = AppConfig(model=ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32"),
                    generation=GenerationArgs(max_new_tokens=6), page=PageArgs(port=port, run_root=str(tmp_path)))
    page_app = app(cfg, block=False)
    try:
        with browser() as page:
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#chat-box")
            assert "loaded: model" in page.inner_text("#chat-status")
            page.set_input_files("#chat-box input[type=file]", str(image))
            wait_until(lambda: page.locator("#chat-box img").count(), 30, "the image to upload")
            send(page, "What shape is this?")
            wait_until(lambda: page.locator("#chat-bot .bot").count() == 1, 60, "the first reply")
            send(page, "And its colour?")
            wait_until(lambda: page.locator("#chat-bot .bot").count() == 2, 60, "the second reply")
            assert page.locator("#chat-bot img").count() == 1
            page.screenshot(path=tmp_path / "app.png", full_page=True)
    finally:
        page_app.close()
    assert list((tmp_path / "uploads").rglob("shape.png"))


def send(page, text: str) -> None:
    page.locator("#chat-box textarea").fill(text)
    page.locator("#chat-box textarea").press("Enter")
