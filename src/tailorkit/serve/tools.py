"""OpenAI tool calling for `deploy`: requests with ``tools`` are rendered by the one encoder (data/tools.py) and
replies are parsed back into ``tool_calls``.

Replies are parsed in the hermes format that Qwen2.5 / Qwen3 templates (and ``--agent_template hermes``)
teach: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks. Text outside the blocks stays
the message content; a block that is not valid JSON is left in the content rather than guessed at.
"""

from __future__ import annotations

import json
import re
import uuid

from .errors import ApiError

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """(content left outside the calls or None, OpenAI tool_calls) of a generated reply."""
    calls, kept, last = [], [], 0
    for match in _CALL.finditer(text):
        try:
            body = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            continue
        kept.append(text[last:match.start()])
        last = match.end()
        calls.append({"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                      "function": {"name": body["name"],
                                   "arguments": json.dumps(body.get("arguments", {}), ensure_ascii=False)}})
    kept.append(text[last:])
    content = "".join(kept).strip()
    return (content or None) if calls else text, calls


def assistant_message(text: str, with_tools: bool) -> tuple[dict, str | None]:
    """The reply message, and ``"tool_calls"`` as the finish reason when it calls tools (else None)."""
    if not with_tools:
        return {"role": "assistant", "content": text}, None
    content, calls = parse_tool_calls(text)
    if not calls:
        return {"role": "assistant", "content": text}, None
    return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"


def check_tool_request(tools, tool_choice, stream: bool) -> None:
    """What this server does with tools: any list of functions, tool_choice auto, whole (not streamed) replies."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice needs tools", param="tool_choice")
        return
    if tool_choice not in (None, "auto"):
        raise ApiError(400, "only tool_choice 'auto' is supported (the model decides); leave it out",
                       param="tool_choice")
    if stream:
        raise ApiError(400, "streaming is not supported together with tools (calls are parsed from the whole "
                            "reply); set stream to false", param="stream")
