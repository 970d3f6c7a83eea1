"""Property-based fuzz of the request schema (hypothesis): whatever a client sends to /v1/chat/completions or
/v1/completions, the answer is never a 5xx, every error is OpenAI's error JSON, and a stream ends with [DONE]
without an error event. Examples are derandomized, so CI runs the same few hundred every time."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from serve_helpers import AUTH, data_uri, png_bytes
from tailorkit.testing import bomb_png

SPECIAL = ["<|im_end|>", "<|im_start|>assistant\n", "<|image_pad|>", "<|vision_start|>", "<image>", "<video>",
           "<|endoftext|>", "\ud800", "\udfff", "\x00", "\u202e", "🙂", "é"]
IMAGES = [data_uri(png_bytes(size=28)), data_uri(png_bytes(size=1)), data_uri(png_bytes(size=28))[:-12],
          "data:image/png;base64,@@@", "data:text/plain,hello", data_uri(b"GIF89a"), data_uri(bomb_png(5000, 5000)),
          "inside.png", "../outside.png", "/etc/passwd", "file:///etc/passwd", "file://host/x.png",
          "http://127.0.0.1:9/x.png", "ftp://x/y.png", "inside\x00.png", "x" * 300, "a/" * 2100, ""]
ROLES = ["system", "user", "assistant", "tool", "wizard", ""]

text = st.one_of(st.text(max_size=12), st.sampled_from(SPECIAL),
                 st.builds(lambda a, b, c: a + b + c, st.text(max_size=4), st.sampled_from(SPECIAL), st.text(max_size=4)))
scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                   text)
junk = st.one_of(scalar, st.lists(scalar, max_size=3), st.dictionaries(text, scalar, max_size=2))

# Mostly well-formed requests (so that many reach the encoder, the media checks and generation), each with a
# few fields replaced by anything; and some bodies that are anything at all.
plain_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
image_part = st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries(
    {"url": st.one_of(st.just(IMAGES[0]), st.just(IMAGES[0]), st.sampled_from(IMAGES), text)})})
text_part = st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(plain_text, plain_text, text)})
content = st.one_of(plain_text, plain_text, text, st.lists(st.one_of(text_part, image_part), min_size=1, max_size=3))


@st.composite
def conversations(draw) -> list[dict]:
    """An optional system message, then user and assistant in turn, ending with the user."""
    turns = draw(st.integers(0, 2))
    msgs = [{"role": "system", "content": draw(plain_text)}] if draw(st.booleans()) else []
    for _ in range(turns):
        msgs += [{"role": "user", "content": draw(content)}, {"role": "assistant", "content": draw(plain_text)}]
    return msgs + [{"role": "user", "content": draw(content)}]


SAMPLING = {
    "max_tokens": st.integers(1, 4), "temperature": st.sampled_from([0, 0.01, 0.7, 2.0]),
    "top_p": st.floats(0.05, 1.0), "top_k": st.integers(0, 50), "repetition_penalty": st.sampled_from([0.01, 1.0, 1.3, 10.0]),
    "seed": st.integers(0, 2**63 - 1), "n": st.integers(1, 3), "stop": st.lists(plain_text, max_size=2),
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "user": plain_text, "logprobs": st.just(False), "frequency_penalty": st.just(0),
}
ODD = {  # values each field may be replaced by: out of range, wrong type, or refused features
    "model": st.one_of(text, scalar), "messages": st.one_of(st.lists(junk, max_size=3), junk),
    "max_tokens": st.one_of(st.integers(-1, 0), st.integers(65, 2**70), scalar),
    "temperature": st.one_of(st.sampled_from([1e-300, 0.005, 2.5, -0.1]), scalar),
    "top_p": st.one_of(st.sampled_from([0, 1e-300, 1.5]), scalar), "top_k": st.one_of(st.sampled_from([2**31, 2**63, -1]), scalar),
    "repetition_penalty": st.one_of(st.sampled_from([1e-300, 0, 1e300]), scalar),
    "seed": st.one_of(st.sampled_from([2**63, 2**64, -1]), scalar), "n": st.one_of(st.integers(-1, 0), st.integers(17, 99), scalar),
    "stop": st.one_of(st.lists(text, min_size=5, max_size=6), st.just([""]), junk), "stream": scalar,
    "stream_options": junk, "logprobs": st.just(True), "tools": junk, "response_format": junk,
    "max_completion_tokens": st.one_of(st.integers(-1, 9), scalar), "prompt": st.one_of(st.lists(text, max_size=70), junk),
}


def with_odd_fields(valid: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` bodies with up to two fields replaced by odd values."""
    edits = st.lists(st.sampled_from(sorted(ODD)).flatmap(lambda k: st.tuples(st.just(k), ODD[k])), max_size=2)
    return st.tuples(valid, edits).map(lambda be: {**be[0], **dict(be[1])})


MODELS = st.sampled_from(["tiny-vl", "alpha", "beta"])
valid_chat = st.fixed_dictionaries({"model": MODELS, "messages": conversations()}, optional=SAMPLING)
valid_completion = st.fixed_dictionaries({"model": MODELS, "prompt": st.one_of(
    plain_text, text, st.lists(plain_text, min_size=1, max_size=3))}, optional=SAMPLING)
chat_bodies = st.one_of(valid_chat, with_odd_fields(valid_chat), with_odd_fields(valid_chat), junk)
completion_bodies = st.one_of(valid_completion, with_odd_fields(valid_completion), junk)

FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server[0], headers={**AUTH, "Content-Type": "application/json"}, timeout=120) as c:
        yield c


def check_answer(resp: httpx.Response, body) -> None:
    """No 5xx; an error is OpenAI's error JSON; a 200 is a completion or a stream that ends well."""
    event(f"HTTP {resp.status_code}")  # the spread is shown by pytest --hypothesis-show-statistics
    assert resp.status_code < 500, (resp.status_code, resp.text[:500], body)
    if resp.status_code != 200:
        err = resp.json()["error"]
        assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str), err
        assert " at 0x" not in err["message"]
        return
    if not resp.headers["content-type"].startswith("text/event-stream"):
        assert resp.json()["choices"], resp.text[:500]
        return
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", resp.text[-500:]
    for data in events[:-1]:
        assert "error" not in json.loads(data), data


@FUZZ
@given(body=chat_bodies)
def test_fuzzed_chat_requests_never_give_a_5xx(http, body):
    check_answer(http.post("/v1/chat/completions", content=json.dumps(body)), body)


@settings(FUZZ, max_examples=200)
@given(body=completion_bodies)
def test_fuzzed_completion_requests_never_give_a_5xx(http, body):
    check_answer(http.post("/v1/completions", content=json.dumps(body)), body)
