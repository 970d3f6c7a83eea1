"""The Chat tab (web-ui) and the page of `tailorkit app`: pick a model and a checkpoint or adapters (a form
generated from `tailorkit infer`'s settings), then chat: several turns, images uploaded, replies streamed."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..config.infer import InferConfig
from ..errors import TailorkitError
from .chat import ChatModel, stream_reply
from .jobs import run_checkpoints
from .forms import build_concern, form_fields, settings_from_widgets
from .paths import check_inputs
from .widgets import error_text, escape, render_form

# infer's dataset-mode settings have no meaning in a chat
EXCLUDE = ("val_dataset", "result_path", "stream")
LOAD_COMMON = ("model", "ckpt_dir", "adapters", "torch_dtype")
CHAT_COMMON = ("max_new_tokens", "temperature", "system")
LOAD_CONCERNS = ("model", "engine")


def chat_panel(chat: ChatModel, cwd: Path, *, root: Path | None = None, values: dict | None = None,
               loaded: str = "") -> None:
    """Render the chat. With a run root, the model form, a picker of the runs' checkpoints and Load; without
    one (`tailorkit app`) the model ``chat`` holds is fixed."""
    loadable = root is not None
    exclude = EXCLUDE + (() if loadable else tuple(f.name for f in form_fields(InferConfig)
                                                    if f.concern in LOAD_CONCERNS))
    fields = form_fields(InferConfig, exclude=exclude)
    common = (LOAD_COMMON if loadable else ()) + CHAT_COMMON
    status = gr.Markdown(escape(f"loaded: {loaded}") if loaded else "no model loaded yet", elem_id="chat-status")
    form = render_form(fields, common, "chat", values)
    if loadable:
        picker = gr.Dropdown(label="or pick a checkpoint of a run (fills ckpt_dir)", choices=[],
                             elem_id="chat-pick")
        picker.focus(lambda: gr.update(choices=run_checkpoints(root)), None, picker)
        picker.input(lambda path: path, picker, form.widget("ckpt_dir"))
        load = gr.Button("Load", variant="primary", elem_id="chat-load")
        load.click(lambda *v: load_model(chat, cwd, fields, v), form.widgets, status)
    bot = gr.Chatbot(label="chat", elem_id="chat-bot", height=420)
    box = gr.MultimodalTextbox(label="message (attach images with the clip)", file_types=["image"],
                               file_count="multiple", sources=["upload"], elem_id="chat-box")
    clear = gr.Button("New conversation", elem_id="chat-clear")
    turns = gr.State([])

    def send(message, history, *values):  # a generator function: gradio streams what it yields
        yield from reply(chat, fields, message, history, values)

    box.submit(send, [box, turns, *form.widgets], [bot, box, turns, status])
    clear.click(lambda: ([], [], None), None, [bot, turns, box])


def load_model(chat: ChatModel, cwd: Path, fields, values) -> str:
    """Load what the form names; the message shown above the chat."""
    try:
        settings = settings_from_widgets(fields, list(values))
        problems = check_inputs({k: settings[k] for k in ("model", "ckpt_dir", "adapters") if k in settings}, cwd)
        if problems:
            raise TailorkitError("; ".join(problems))
        if not settings.get("model") and not settings.get("ckpt_dir"):
            raise TailorkitError("give a model (folder or hub id) or a checkpoint folder (ckpt_dir)")
        text = chat.load(build_concern(InferConfig, "model", settings), build_concern(InferConfig, "engine",
                                                                                       settings))
    except Exception as e:  # shown in the page: a missing folder, a model that does not load ...
        return error_text(e)
    return escape(f"loaded: {text}")


def display(turns: list[dict]) -> list[dict]:
    """The chatbot's messages: each uploaded image, then the text."""
    out = []
    for turn in turns:
        for image in turn.get("images", []):
            out.append({"role": "user", "content": {"path": image}})
        if turn["content"] or turn["role"] == "assistant":
            out.append({"role": turn["role"], "content": turn["content"]})
    return out


def reply(chat: ChatModel, fields, message: dict | None, turns: list[dict], values):
    """Stream the reply to a new user message: yields (chatbot, cleared box, turns, status)."""
    message = message or {}
    text, files = (message.get("text") or "").strip(), [str(f) for f in message.get("files") or []]
    if not text and not files:
        yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return
    try:
        settings = settings_from_widgets(fields, list(values))
        generation = build_concern(InferConfig, "generation", settings)
    except TailorkitError as e:
        yield gr.skip(), gr.skip(), gr.skip(), error_text(e)
        return
    turns = turns + [{"role": "user", "content": text, "images": files}]
    answer = {"role": "assistant", "content": ""}
    try:
        for partial in stream_reply(chat, turns, generation, settings.get("system")):
            answer["content"] = partial
            yield display(turns + [answer]), None, gr.skip(), gr.skip()
    except Exception as e:  # shown in the page: an unreadable image, a prompt over the context ...
        yield display(turns[:-1]), message, gr.skip(), error_text(e)
        return
    yield display(turns + [answer]), None, turns + [answer], gr.skip()
