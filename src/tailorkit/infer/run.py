"""`tailorkit infer`: an interactive chat in the terminal, or batch answers for a dataset written to jsonl."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..config.infer import GenerationArgs, InferConfig
from ..data.dataset import load_conversations
from ..data.formats import Conversation, parse_row, text_of
from ..errors import GenerationError, TailorkitError
from .engine import Engine, GenerationSettings, Request, generate_many
from .load import build_engine


def settings_from_args(g: GenerationArgs) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                              top_k=g.top_k, repetition_penalty=g.repetition_penalty, seed=g.seed,
                              stop=tuple(g.stop))


@dataclass
class InferResult:
    result_path: Path
    rows: list[dict]


def infer(cfg: InferConfig, *, input_fn=input, output=None) -> InferResult | None:
    """Dataset mode with --val_dataset (returns the rows written), else an interactive chat."""
    engine, spec = build_engine(cfg.model, cfg.engine)
    settings = settings_from_args(cfg.generation)
    system = cfg.infer.system if cfg.infer.system is not None else spec.run_config.get("system")
    if cfg.infer.val_dataset:
        path = Path(cfg.infer.result_path) if cfg.infer.result_path else default_result_path(cfg.engine.ckpt_dir)
        return infer_dataset(engine, cfg.infer.val_dataset, settings, path, system=system,
                             batch_size=cfg.engine.max_batch_size)
    chat_loop(engine, settings, system=system, stream=cfg.infer.stream, input_fn=input_fn,
              output=output or sys.stdout)
    return None


def default_result_path(ckpt_dir: str | None) -> Path:
    return Path(ckpt_dir or ".") / "infer_result" / time.strftime("%Y%m%d-%H%M%S.jsonl")


def split_reference(conv: Conversation) -> tuple[Conversation, str | None]:
    """The prompt part of a dataset row and its reference reply (the last assistant message, if any)."""
    if conv.messages[-1]["role"] != "assistant":
        return conv, None
    prompt = Conversation(messages=conv.messages[:-1], images=conv.images, source=conv.source, line=conv.line,
                          base_dir=conv.base_dir)
    return prompt, text_of(conv.messages[-1]["content"])


def infer_dataset(engine: Engine, specs: list[str], settings: GenerationSettings, result_path: Path, *,
                  system: str | None = None, batch_size: int = 16) -> InferResult:
    """Answer every row of ``specs`` (in batches, with a progress bar) and write prompt, reference, response."""
    convs = load_conversations(specs, system=system, need_reply=False)
    pairs = [split_reference(c) for c in convs]
    adapters = engine.adapter_names
    requests = [Request(conversation=p, settings=settings, adapters=adapters) for p, _ in pairs]
    with tqdm(total=len(requests), desc="infer", unit="row") as bar:
        done = generate_many(engine, requests, batch_size, on_batch=bar.update)
    rows = []
    for (prompt, reference), c in zip(pairs, done):
        rows.append({"messages": prompt.messages, "images": [str(x) for x in prompt.images],
                     "reference": reference, "response": c.text, "finish_reason": c.finish_reason,
                     "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                     "source": f"{prompt.source}:{prompt.line}"})
    result_path.parent.mkdir(parents=True, exist_ok=True)
    with result_path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"[tailorkit] {len(rows)} responses written to {result_path}")
    return InferResult(result_path, rows)


HELP = ("Type a message. Put <image> where an image goes, then give its path or URL when asked. "
        "'clear' resets the conversation, 'exit' quits.")


def chat_loop(engine: Engine, settings: GenerationSettings, *, system: str | None = None, stream: bool = True,
              input_fn=input, output=sys.stdout) -> list[dict]:
    """Multi-turn chat in the terminal; returns the final history."""
    history: list[dict] = []
    images: list[str] = []
    print(HELP, file=output)
    while True:
        try:
            query = input_fn("<<< ").strip()
        except EOFError:
            break
        if query in ("exit", "quit"):
            break
        if query == "clear":
            history, images = [], []
            print("[history cleared]", file=output)
            continue
        if not query:
            continue
        new_images = [input_fn(f"image {k + 1} (path or URL): ").strip() for k in range(query.count("<image>"))]
        messages = history + [{"role": "user", "content": query}]
        try:
            text = _reply(engine, settings, system, messages, images + new_images, stream, output)
        except TailorkitError as e:
            print(f"[error] {e}", file=output)
            continue
        history = messages + [{"role": "assistant", "content": text}]
        images += new_images
    return history


def _reply(engine, settings, system, messages, images, stream, output) -> str:
    rows = ([{"role": "system", "content": system}] if system else []) + messages
    conv = parse_row({"messages": rows, "images": images}, source="chat", base_dir=os.getcwd(), need_reply=False)
    request = Request(conversation=conv, settings=settings, adapters=engine.adapter_names)
    request.encoded = engine.encode(request)  # unreadable images fail here, before the reply starts
    print(">>> ", end="", file=output, flush=True)

    def show(_, delta: str) -> None:
        print(delta, end="", file=output, flush=True)

    done = engine.generate_batch([request], on_text=show if stream else None)[0]
    if done.error is not None:
        raise GenerationError(done.error)
    print(("" if stream else done.text), file=output, flush=True)
    return done.text
