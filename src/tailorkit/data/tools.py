"""Agent / tool-call rows: the OpenAI messages shape and ms-swift's roles, one canonical form, native rendering.

Canonical form (OpenAI's): a row's ``tools`` list; an assistant message may carry ``tool_calls``
(``[{"type": "function", "function": {"name", "arguments": {...}}}]``); a ``tool`` message holds a result.
ms-swift's ``tool_call`` (content: ``{"name", "arguments"}`` JSON) and ``tool_response`` roles, and sharegpt's
``function_call`` / ``observation``, are turned into that form. Rendering is the model's own chat template
with ``tools=``; a template that ignores tools (it would silently drop the calls) is an error, unless
``--agent_template hermes`` wraps it: tools go into the system message and calls / results become
``<tool_call>`` / ``<tool_response>`` text, the format Qwen2.5 and Qwen3 use natively.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError

SWIFT_ROLES = {"tool_call": "assistant", "tool_response": "tool", "function_call": "assistant",
               "observation": "tool"}
AGENT_TEMPLATES = ("hermes",)
_MARK = "{#- tailorkit agent_template: hermes -#}"
# Jinja run before the model's own template: rewrites the tool parts of `messages` into plain text turns.
HERMES_PRELUDE = _MARK + (Path(__file__).parent / "agent_templates" / "hermes.jinja").read_text()


def parse_tools(value) -> list[dict]:
    """A row's ``tools``: a list of tool dicts, or that list as a JSON string (ms-swift stores it so)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"is a string but not JSON: {e.msg}", field="tools") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise DataError("must be a list of tool objects ({'type': 'function', 'function': {name, description, "
                        "parameters}})", field="tools")
    for i, tool in enumerate(value):
        fn = tool.get("function", tool)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise DataError("a tool needs a function name", field=f"tools[{i}]")
    return value


def to_openai_messages(raw: list) -> list:
    """ms-swift's tool_call / tool_response roles as OpenAI messages: calls join the assistant turn before them."""
    out = []
    for i, msg in enumerate(raw):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in SWIFT_ROLES:
            out.append(msg)
        elif SWIFT_ROLES[role] == "tool":
            out.append({"role": "tool", "content": _as_text(msg.get("content"))})
        else:
            call = {"type": "function", "function": _swift_call(msg.get("content"), f"messages[{i}].content")}
            last = out[-1] if out else None
            if isinstance(last, dict) and last.get("role") == "assistant" and (last.get("tool_calls") or
                                                                              raw[i - 1].get("role") == "assistant"):
                out[-1] = {**last, "tool_calls": [*(last.get("tool_calls") or []), call]}
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
    return out


def _swift_call(content, field: str) -> dict:
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except json.JSONDecodeError as e:
            raise DataError(f"a tool_call must be JSON {{\"name\", \"arguments\"}}: {e.msg}", field=field) from None
    if not isinstance(content, dict) or not isinstance(content.get("name"), str):
        raise DataError("a tool_call needs a function 'name' and 'arguments'", field=field)
    return {"name": content["name"], "arguments": content.get("arguments", {})}


def _as_text(content) -> str:
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def parse_tool_calls(calls, field: str) -> list[dict]:
    """An assistant's ``tool_calls`` in canonical form, arguments as an object (templates index into them)."""
    if not isinstance(calls, list) or not calls:
        raise DataError("must be a non-empty list of calls", field=field)
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise DataError("a tool call needs function.name", field=f"{field}[{j}]")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise DataError(f"function.arguments is not JSON: {e.msg}", field=f"{field}[{j}]") from None
        entry = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def apply_agent_template(processor, name: str | None) -> None:
    """Put the agent template in front of the processor's chat template (saved with it, so inference renders
    the same); None leaves the native template."""
    if name is None:
        return
    if name not in AGENT_TEMPLATES:
        from ..errors import ConfigError
        raise ConfigError(f"agent_template {name!r} is not one of {', '.join(AGENT_TEMPLATES)}")
    tok = getattr(processor, "tokenizer", processor)
    for owner in {id(processor): processor, id(tok): tok}.values():
        template = getattr(owner, "chat_template", None)
        if isinstance(template, str) and _MARK not in template:
            owner.chat_template = HERMES_PRELUDE + template


_RENDERS_TOOLS: dict[str, bool] = {}  # chat template text -> whether it renders tools
_PROBE_TOOL = {"type": "function", "function": {"name": "probe_tool_x", "description": "d",
                                                "parameters": {"type": "object", "properties": {}}}}
_PROBE = [{"role": "user", "content": "q"},
          {"role": "assistant", "content": "", "tool_calls": [
              {"type": "function", "function": {"name": "probe_tool_x", "arguments": {"city": "probe_arg_y"}}}]},
          {"role": "tool", "content": "probe_result_z"}]


def renders_tools(processor, render) -> bool:
    """Whether the chat template renders the tools, a call's arguments and a tool result (cached)."""
    tok = getattr(processor, "tokenizer", processor)
    key = str(getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None))
    if key not in _RENDERS_TOOLS:
        try:
            text = render(processor, _PROBE, True, tools=[_PROBE_TOOL])
        except Exception:  # noqa: BLE001 - a template that raises on tool messages does not render them
            text = ""
        _RENDERS_TOOLS[key] = all(s in text for s in ("probe_tool_x", "probe_arg_y", "probe_result_z"))
    return _RENDERS_TOOLS[key]
