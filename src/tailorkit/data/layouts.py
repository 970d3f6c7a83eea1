"""Row layouts, auto-detected: each turns a row into OpenAI-style ``messages`` (not yet validated).

messages | sharegpt (conversations with from/value) | alpaca (instruction/input/output) |
query_response (query/response, optional history); any of them may carry ``system``.
"""

from __future__ import annotations

from ..errors import DataError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                  "function_call": "tool_call", "observation": "tool_response", "tool_call": "tool_call",
                  "tool_response": "tool_response", "tool": "tool"}
LAYOUT_HINT = ('rows look like {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}, '
               '{"conversations": [{"from": "human", "value": "..."}, ...]}, '
               '{"instruction": ..., "input": ..., "output": ...} or {"query": ..., "response": ..., "history": [...]}')


def detect_layout(row: dict) -> str:
    """The layout name of a row; a row that fits none is an error naming what is missing."""
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row or "output" in row:
        return "alpaca"
    if "query" in row or "response" in row:
        return "query_response"
    raise DataError(f"row has none of the keys messages, conversations, instruction/output, query/response "
                    f"(it has: {', '.join(sorted(map(str, row))) or 'nothing'})", field="messages", fix=LAYOUT_HINT)


def to_messages(row: dict, layout: str) -> list:
    """OpenAI-style messages of a row in ``layout``, with the row's ``system`` prepended."""
    messages = {"messages": _messages, "sharegpt": _sharegpt, "alpaca": _alpaca,
                "query_response": _query_response}[layout](row)
    system = row.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise DataError("must be a string", field="system")
        if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
            raise DataError("the row has both 'system' and a system message", field="system",
                            fix="keep one of the two")
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def _messages(row: dict) -> list:
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError("must be a non-empty list of {role, content} objects", field="messages", fix=LAYOUT_HINT)
    return list(messages)


def _sharegpt(row: dict) -> list:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise DataError("must be a non-empty list of {from, value} objects", field="conversations")
    out = []
    for i, turn in enumerate(turns):
        if isinstance(turn, dict) and "role" in turn and "content" in turn:
            out.append(turn)
            continue
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError("each turn needs 'from' and 'value'", field=f"conversations[{i}]")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise DataError(f"'from' is {turn['from']!r}; expected one of human, gpt, system",
                            field=f"conversations[{i}].from")
        out.append({"role": role, "content": turn["value"]})
    return out


def _alpaca(row: dict) -> list:
    instruction, extra, output = row.get("instruction"), row.get("input"), row.get("output")
    for name, value in (("instruction", instruction), ("output", output)):
        if not isinstance(value, str):
            raise DataError("must be a string" if value is not None else "is missing", field=name,
                            fix="alpaca rows need 'instruction' and 'output' ('input' is optional)")
    if extra is not None and not isinstance(extra, str):
        raise DataError("must be a string", field="input")
    query = f"{instruction}\n{extra}" if extra else instruction  # ms-swift's joining
    return [{"role": "user", "content": query}, {"role": "assistant", "content": output}]


def _query_response(row: dict) -> list:
    history = row.get("history") or []
    if not isinstance(history, list):
        raise DataError("must be a list of [query, response] pairs", field="history")
    out = []
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DataError("each entry must be a [query, response] pair", field=f"history[{i}]")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    for name in ("query", "response"):
        if not isinstance(row.get(name), str):
            raise DataError("must be a string" if name in row else "is missing", field=name,
                            fix="query/response rows need both 'query' and 'response'")
    return out + [{"role": "user", "content": row["query"]}, {"role": "assistant", "content": row["response"]}]


def preference_of(row: dict, messages: list) -> tuple[list | None, bool | None]:
    """(rejected messages, KTO label) of a row; both None for plain SFT rows."""
    label = row.get("label")
    if label is not None:
        if isinstance(label, bool) or (isinstance(label, int) and label in (0, 1)):
            label = bool(label)
        else:
            raise DataError(f"KTO 'label' must be true or false, got {label!r}", field="label",
                            fix="true marks a desirable reply, false an undesirable one")
    rejected = None
    if "rejected_response" in row and "rejected_messages" in row:
        raise DataError("the row has both 'rejected_response' and 'rejected_messages'", field="rejected_response",
                        fix="keep one of the two")
    if "rejected_response" in row:
        reply = row["rejected_response"]
        if not isinstance(reply, str) or not reply.strip():
            raise DataError("must be a non-empty string", field="rejected_response")
        rejected = [*messages[:-1], {"role": "assistant", "content": reply}]
    elif "rejected_messages" in row:
        rejected = _messages({"messages": row["rejected_messages"]})
        if row.get("system") is not None and rejected[0].get("role") != "system":
            rejected = [{"role": "system", "content": row["system"]}, *rejected]
    if rejected is not None and label is not None:
        raise DataError("a row is either a preference pair (rejected_*) or a KTO sample (label), not both",
                        field="label")
    return rejected, label
