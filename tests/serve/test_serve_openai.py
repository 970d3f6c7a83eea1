"""The official openai client against `tailorkit deploy` on 127.0.0.1 with a tiny vision-language model."""

from __future__ import annotations

import httpx
import pytest

from serve_helpers import API_KEY, data_uri, png_bytes

openai = pytest.importorskip("openai", reason="the openai client is needed for the API compatibility tests")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def image_message(text="What colour is the shape?", color=(255, 0, 0)):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(png_bytes(color))}},
                                         {"type": "text", "text": text}]}]


def test_models_lists_base_and_adapters(client):
    assert sorted(m.id for m in client.models.list().data) == ["alpha", "beta", "tiny-vl"]


def test_chat_with_data_uri_image_counts_tokens_like_the_encoder(client, server):
    from tailorkit.data.encode import encode_prompt
    from tailorkit.data.formats import parse_row

    out = client.chat.completions.create(model="tiny-vl", messages=image_message(), max_tokens=8, temperature=0)
    choice = out.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    engine = server[1].state.queue.engine
    conv = parse_row({"messages": image_message(), "images": []}, need_reply=False)
    from PIL import Image
    conv.images = [Image.new("RGB", (56, 56), (255, 0, 0))]
    assert out.usage.prompt_tokens == len(encode_prompt(conv, engine.processor).input_ids)
    assert 1 <= out.usage.completion_tokens <= 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streaming_gives_the_same_text_and_ends_with_done(client, server):
    full = client.chat.completions.create(model="tiny-vl", messages=image_message(), max_tokens=10)
    chunks = list(client.chat.completions.create(model="tiny-vl", messages=image_message(), max_tokens=10,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    body = {"model": "tiny-vl", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 3, "stream": True}
    raw = httpx.post(server[0] + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"},
                     timeout=60)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_two_adapters_answer_differently(client):
    answers = {m: client.chat.completions.create(model=m, messages=image_message(), max_tokens=12).choices[0]
               .message.content for m in ("tiny-vl", "alpha", "beta")}
    assert len(set(answers.values())) == 3, answers


def test_n_seed_and_stop(client):
    greedy = client.chat.completions.create(model="alpha", messages=image_message(), max_tokens=12, n=2)
    assert [c.index for c in greedy.choices] == [0, 1]
    text = greedy.choices[0].message.content
    assert greedy.choices[1].message.content == text
    assert len(text) >= 4, text
    stop = text[2:4]
    cut = client.chat.completions.create(model="alpha", messages=image_message(), max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    sampled = [client.chat.completions.create(model="beta", messages=image_message(), max_tokens=12, temperature=1.5,
                                              seed=7).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_text_completions(client, server):
    out = client.completions.create(model="beta", prompt="The quick brown fox", max_tokens=5)
    tok = server[1].state.queue.engine.tokenizer
    assert out.usage.prompt_tokens == len(tok("The quick brown fox")["input_ids"])
    assert out.usage.completion_tokens <= 5 and out.choices[0].finish_reason in ("stop", "length")
    streamed = client.completions.create(model="beta", prompt="The quick brown fox", max_tokens=5, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == out.choices[0].text


def test_streaming_several_choices(client):
    full = client.chat.completions.create(model="beta", messages=image_message(), max_tokens=6, n=2)
    texts = {0: "", 1: ""}
    for c in client.chat.completions.create(model="beta", messages=image_message(), max_tokens=6, n=2, stream=True):
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {i: ch.message.content for i, ch in enumerate(full.choices)}
