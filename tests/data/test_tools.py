"""Agent / tool-call rows: both input shapes, native rendering, labels on calls and replies only, the agent
template for a template without tools, the same prompt in inference, and deploy answering with tool_calls."""

from __future__ import annotations

import json

import pytest

from helpers import write_jsonl
from tailorkit.config.train import ModelArgs
from tailorkit.data.dataset import load_conversations
from tailorkit.data.encode import IGNORE, encode, encode_prompt
from tailorkit.data.formats import Conversation, parse_row
from tailorkit.errors import DataError
from tailorkit.models.load import load_bundle, load_processor
from tailorkit.models.registry import FAMILIES

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
OPENAI_ROW = {"tools": TOOLS, "messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(CALL["arguments"])}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny."}]}
SWIFT_ROW = {"tools": json.dumps(TOOLS), "messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "tool_call", "content": json.dumps(CALL)},
    {"role": "tool_response", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny."}]}
SHAREGPT_ROW = {"tools": TOOLS, "conversations": [
    {"from": "human", "value": "Weather in Paris?"}, {"from": "function_call", "value": json.dumps(CALL)},
    {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "It is sunny."}]}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def qwen3_dir(family_dirs):
    return family_dirs("qwen3")


@pytest.fixture(scope="module")
def qwen3(qwen3_dir):
    return load_processor(str(qwen3_dir), False, FAMILIES["qwen3"].chat_template)


def _spans(enc, tok) -> list[str]:
    out, cur = [], []
    for token, label in zip(enc.input_ids + [0], enc.labels + [IGNORE]):
        if label != IGNORE:
            cur.append(token)
        elif cur:
            out.append(tok.decode(cur))
            cur = []
    return out


def test_openai_swift_and_sharegpt_shapes_encode_identically(tmp_path, qwen3):
    convs = load_conversations([str(write_jsonl(tmp_path / "agent.jsonl", [OPENAI_ROW, SWIFT_ROW, SHAREGPT_ROW]))])
    encoded = [encode(c, qwen3) for c in convs]
    assert all(e.input_ids == encoded[0].input_ids and e.labels == encoded[0].labels for e in encoded)
    assert convs[1].messages[1]["tool_calls"][0]["function"] == CALL and convs[1].tools == TOOLS


def test_labels_on_calls_and_replies_never_on_tool_results(qwen3):
    enc = encode(parse_row(OPENAI_ROW), qwen3)
    assert _spans(enc, qwen3) == [CALL_TEXT + "<|im_end|>", "It is sunny.<|im_end|>"]
    text = qwen3.decode(enc.input_ids)
    assert "get_weather" in text.split("<|im_start|>user")[0]  # the tools are rendered in the system turn
    result = qwen3("\n<tool_response>\nsunny\n</tool_response>", add_special_tokens=False)["input_ids"]
    at = next(i for i in range(len(enc.input_ids)) if enc.input_ids[i:i + len(result)] == result)
    assert all(label == IGNORE for label in enc.labels[at:at + len(result)])


def test_prompt_for_inference_is_the_training_prefix_with_tools(qwen3):
    """Train -> serve parity: before each assistant turn, the inference prompt (tools included) equals the
    training tokens up to that turn's first supervised token."""
    conv = parse_row(OPENAI_ROW)
    enc = encode(conv, qwen3)
    starts = [i for i in range(len(enc.labels)) if enc.labels[i] != IGNORE and (i == 0 or enc.labels[i - 1] == IGNORE)]
    turns = [i for i, m in enumerate(conv.messages) if m["role"] == "assistant"]
    for start, turn in zip(starts, turns):
        prompt = encode_prompt(Conversation(messages=conv.messages[:turn], tools=conv.tools), qwen3)
        assert prompt.input_ids == enc.input_ids[:start]


def test_template_without_tools_is_refused_then_rendered_by_the_agent_template(tmp_path, tiny_text_dir, qwen3):
    [conv] = load_conversations([str(write_jsonl(tmp_path / "agent.jsonl", [OPENAI_ROW]))])
    plain = load_processor(str(tiny_text_dir))  # Qwen2-Instruct's template: no tools
    with pytest.raises(DataError, match=r"agent\.jsonl:1: tools: .*does not render tools.*--agent_template hermes"):
        encode(conv, plain)
    bundle = load_bundle(ModelArgs(model=str(tiny_text_dir), torch_dtype="float32", agent_template="hermes"))
    enc = encode(conv, bundle.processor)
    assert _spans(enc, bundle.tokenizer) == [CALL_TEXT + "<|im_end|>", "It is sunny.<|im_end|>"]
    assert bundle.tokenizer.decode(enc.input_ids) == qwen3.decode(encode(conv, qwen3).input_ids)  # Qwen3's layout
    bundle.processor.save_pretrained(tmp_path / "saved")  # a checkpoint carries the template it trained with
    assert encode(conv, load_processor(str(tmp_path / "saved"))).input_ids == enc.input_ids
    no_tools = parse_row({"messages": OPENAI_ROW["messages"][:1] + [{"role": "assistant", "content": "hi"}]})
    assert encode(no_tools, bundle.processor).input_ids == encode(no_tools, plain).input_ids


@pytest.mark.parametrize("messages, field", [
    ([{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}], r"messages\[1\]\.role"),
    ([{"role": "user", "content": "q"}, {"role": "tool_call", "content": "{not json"}], r"messages\[1\]\.content"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{bad"}}]}], r"messages\[1\]\.tool_calls\[0\]"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}],
     r"messages\[1\]\.tool_calls\[0\]"),
])
def test_broken_agent_rows_name_file_line_and_field(tmp_path, messages, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": messages, "tools": TOOLS}])
    with pytest.raises(DataError, match=rf"bad\.jsonl:1: {field}"):
        load_conversations([str(path)])


@pytest.mark.slow
def test_deploy_answers_tools_with_parsed_tool_calls(qwen3_dir, tmp_path):
    """A tiny Qwen3 trained to call get_weather is served; a tools request gets the call back as tool_calls,
    and a follow-up with the tool result is accepted."""
    from fastapi.testclient import TestClient

    from tailorkit.config import build_config
    from tailorkit.config.train import SftConfig
    from tailorkit.config.infer import DeployConfig
    from tailorkit.serve.deploy import build_app
    from tailorkit.train.sft import sft

    row = {"tools": TOOLS, "messages": OPENAI_ROW["messages"][:2]}
    data = write_jsonl(tmp_path / "calls.jsonl", [row])
    cfg = build_config(SftConfig, {"model": str(qwen3_dir), "dataset": [str(data)], "train_type": "full",
                                   "torch_dtype": "float32", "output_dir": str(tmp_path / "out"), "max_steps": 40,
                                   "learning_rate": 3e-3, "lr_scheduler_type": "constant", "save_strategy": "no",
                                   "logging_steps": 10, "weight_decay": 0.0})
    result = sft(cfg)
    app, _ = build_app(build_config(DeployConfig, {"model": str(result.final_dir), "torch_dtype": "float32",
                                                   "served_model_name": "agent", "max_new_tokens": 120,
                                                   "temperature": 0.0}))
    with TestClient(app) as client:
        body = {"model": "agent", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": TOOLS}
        reply = client.post("/v1/chat/completions", json=body).json()
        choice = reply["choices"][0]
        assert choice["finish_reason"] == "tool_calls", reply
        [call] = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
        follow = {**body, "messages": [*body["messages"], choice["message"],
                                       {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]}
        assert client.post("/v1/chat/completions", json=follow).status_code == 200
