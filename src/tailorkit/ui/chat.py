"""The chat of the web UI and of `tailorkit app`: multi-turn, images, replies streamed from the infer engine.

No gradio here: ``ChatModel`` holds one loaded engine, ``stream_reply`` yields the growing reply. A turn is
``{"role", "content", "images"}``; a user turn's images are placed before its text as ``<image>`` tags, as
in the training data, and the one encoder builds the prompt.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..config.infer import EngineArgs, GenerationArgs
from ..config.train import ModelArgs
from ..errors import TailorkitError


@dataclass
class ChatModel:
    """The engine the chat talks to, loaded on demand and replaced when another model is picked."""

    engine: object = None
    description: str = ""
    system: str | None = None  # the training run's system prompt, when a checkpoint was picked
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def load(self, model: ModelArgs, engine: EngineArgs) -> str:
        """Load the base model with its checkpoint or adapters (the infer engine's resolution); returns a summary."""
        from ..infer.load import build_engine

        with self.lock:
            self.engine = None  # free the previous model before loading the next
            built, spec = build_engine(model, engine)
            self.engine = built
            self.system = spec.run_config.get("system")
            adapters = ", ".join(f"{k}={v}" for k, v in spec.adapters.items()) or "none"
            self.description = f"model {spec.model.model}; adapters {adapters}"
        return self.description


def conversation_row(turns: list[dict], system: str | None) -> dict:
    """The dataset row (messages + images) of a chat whose last turn is the user's."""
    messages = [{"role": "system", "content": system}] if system else []
    images: list[str] = []
    for turn in turns:
        content = turn["content"]
        if turn["role"] == "user" and turn.get("images"):
            content = "<image>" * len(turn["images"]) + content
            images += [str(p) for p in turn["images"]]
        messages.append({"role": turn["role"], "content": content})
    return {"messages": messages, "images": images}


def settings_of(g: GenerationArgs):
    from ..infer.run import settings_from_args

    return settings_from_args(g)


def stream_reply(chat: ChatModel, turns: list[dict], generation: GenerationArgs,
                 system: str | None = None) -> Iterator[str]:
    """The reply to the last user turn as it grows (each item: the whole reply so far)."""
    from ..data.formats import parse_row
    from ..infer.engine import Request

    if chat.engine is None:
        raise TailorkitError("no model is loaded: pick a model (and a checkpoint or adapters) and press Load")
    row = conversation_row(turns, system if system is not None else chat.system)
    conv = parse_row(row, source="chat", base_dir=".", need_reply=False)
    request = Request(conversation=conv, settings=settings_of(generation), adapters=chat.engine.adapter_names)
    request.encoded = chat.engine.encode(request)  # an unreadable image fails here, before the reply starts
    deltas: queue.Queue = queue.Queue()
    done = object()
    failure: list[BaseException] = []

    def generate():
        try:
            with chat.lock:
                chat.engine.generate_batch([request], on_text=lambda _, delta: deltas.put(delta))
        except BaseException as e:  # handed to the page, not lost in the thread
            failure.append(e)
        finally:
            deltas.put(done)

    threading.Thread(target=generate, daemon=True).start()
    text = ""
    while (delta := deltas.get()) is not done:
        text += delta
        yield text
    if failure:
        raise failure[0]
    yield text
