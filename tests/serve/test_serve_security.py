"""Safe by default: the key guards every endpoint, requests cannot read local files or fetch URLs, sizes are bounded,
and bad input is a 4xx in OpenAI's error JSON."""

from __future__ import annotations

import http.server
import threading

import httpx
import pytest

from serve_helpers import API_KEY, AUTH, MAX_BODY, assert_openai_error, data_uri, deploy_config, image_chat, png_bytes
from tailorkit.serve import media
from tailorkit.serve.deploy import build_app, start_background

CHAT = {"model": "tiny-vl", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 2}
ENDPOINTS = [("GET", "/health", None), ("GET", "/v1/models", None), ("POST", "/v1/chat/completions", CHAT),
             ("POST", "/v1/completions", {"model": "tiny-vl", "prompt": "Hello", "max_tokens": 2}),
             ("GET", "/no/such/route", None)]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}],
                         ids=["missing", "wrong", "no-bearer"])
@pytest.mark.parametrize("method,path,body", ENDPOINTS, ids=[p for _, p, _ in ENDPOINTS])
def test_every_endpoint_needs_the_key(server, method, path, body, headers):
    resp = httpx.request(method, server[0] + path, json=body, headers=headers, timeout=30)
    assert_openai_error(resp, 401)


@pytest.mark.parametrize("method,path,body", ENDPOINTS[:4], ids=[p for _, p, _ in ENDPOINTS[:4]])
def test_the_right_key_opens_every_endpoint(server, method, path, body):
    assert httpx.request(method, server[0] + path, json=body, headers=AUTH, timeout=60).status_code == 200


@pytest.fixture()
def reads(monkeypatch):
    """Every server-local file the media policy lets through."""
    seen = []
    original = media.read_local

    def spy(path):
        seen.append(path)
        return original(path)

    monkeypatch.setattr(media, "read_local", spy)
    return seen


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/etc/passwd", "../outside.png", "inside.png/../../outside.png",
                                 "file://evil.example/etc/passwd", "ftp://127.0.0.1/x.png", "missing.png"])
def test_local_paths_outside_media_root_are_refused_unread(server, reads, url):
    err = assert_openai_error(httpx.post(server[0] + "/v1/chat/completions", json=image_chat(url), headers=AUTH,
                                         timeout=30), 400)
    assert err["param"] == "messages.content.image_url"
    assert reads == []


def test_a_file_inside_media_root_is_served(server, reads, media_root):
    resp = httpx.post(server[0] + "/v1/chat/completions", json=image_chat("inside.png"), headers=AUTH, timeout=60)
    assert resp.status_code == 200, resp.text
    assert reads == [media_root.resolve() / "inside.png"]


@pytest.fixture(scope="module")
def image_host():
    """A local HTTP server on 127.0.0.1 serving one PNG and counting requests."""
    hits = []
    body = png_bytes((255, 255, 0))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/shape.png", hits
    httpd.shutdown()


def test_remote_urls_are_not_fetched_by_default(server, image_host):
    url, hits = image_host
    err = assert_openai_error(httpx.post(server[0] + "/v1/chat/completions", json=image_chat(url), headers=AUTH,
                                         timeout=30), 400)
    assert "--allow_remote_media" in err["message"]
    assert hits == []


def test_remote_urls_are_fetched_when_allowed(tiny_vl_dir, media_root, image_host):
    url, hits = image_host
    app, _ = build_app(deploy_config(tiny_vl_dir, {}, media_root, allow_remote_media=True))
    with start_background(app) as running:
        resp = httpx.post(running.url + "/v1/chat/completions", json=image_chat(url), headers=AUTH, timeout=60)
    assert resp.status_code == 200, resp.text
    assert hits == ["/shape.png"]


def test_long_completion_prompts_and_odd_content_types_are_4xx(server):
    too_long = {"model": "tiny-vl", "prompt": "red " * 4100, "max_tokens": 2}
    err = assert_openai_error(httpx.post(server[0] + "/v1/completions", json=too_long, headers=AUTH, timeout=30), 400)
    assert err["param"] == "prompt" and "context" in err["message"]
    too_many = {"model": "tiny-vl", "prompt": ["red"] * 20, "n": 4, "max_tokens": 2}
    err = assert_openai_error(httpx.post(server[0] + "/v1/completions", json=too_many, headers=AUTH, timeout=30), 400)
    assert err["param"] == "prompt"
    resp = httpx.post(server[0] + "/v1/chat/completions", content=b"model=x", timeout=30,
                      headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert 400 <= resp.status_code < 500 and "error" in resp.json()
    resp = httpx.post(server[0] + "/v1/chat/completions", content=b"", headers=AUTH, timeout=30)
    assert 400 <= resp.status_code < 500 and "error" in resp.json()


def test_oversized_bodies_are_413(server):
    big = image_chat(data_uri(b"\0" * MAX_BODY))
    assert_openai_error(httpx.post(server[0] + "/v1/chat/completions", json=big, headers=AUTH, timeout=30), 413)

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(MAX_BODY // 1024 + 2):
            yield b" " * 1024

    resp = httpx.post(server[0] + "/v1/chat/completions", content=chunks(),
                      headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    assert_openai_error(resp, 413)


@pytest.mark.parametrize("body,status,param", [
    (b'{"model": "tiny-vl", "messages": [', 400, None),
    (b"not json at all", 400, None),
    ({"model": "tiny-vl", "messages": "Hello"}, 422, "messages"),
    ({"model": "tiny-vl"}, 422, "messages"),
    ({**CHAT, "max_tokens": "many"}, 422, "max_tokens"),
    ({**CHAT, "temperature": -1}, 422, "temperature"),
    ({**CHAT, "n": 0}, 422, "n"),
    ({**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, 422, "messages.0.role"),
    ({**CHAT, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 422, "messages.0.content"),
    ({**CHAT, "max_tokens": 10_000}, 400, "max_tokens"),
    ({**CHAT, "messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages"),
    ({**CHAT, "messages": [{"role": "user", "content": "<image> hi"}]}, 400, "messages"),
    ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({**CHAT, "model": "nope"}, 404, "model"),
    ({**CHAT, "logprobs": True}, 400, "logprobs"),
    # this model's template has no tools (it would drop them): refused, naming --agent_template
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "messages"),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}, 400,
     "tool_choice"),
    ({**CHAT, "logprobs": False, "user": "someone", "frequency_penalty": 0}, 200, None),
    ({**CHAT, "messages": [{"role": "user", "content": "red " * 4100}]}, 400, "messages"),
    ({**CHAT, "messages": [{"role": "user", "content": [{"type": "text"}]}]}, 200, None),
    ({**CHAT, "messages": []}, 422, "messages"),
    (b"[]", 422, None),
    (image_chat("data:image/png;base64,@@@"), 400, "messages.content.image_url"),
    (image_chat(data_uri(b"not an image")), 400, "messages.content.image_url"),
])
def test_bad_input_is_a_4xx_openai_error(server, body, status, param):
    kw = {"content": body, "headers": {**AUTH, "Content-Type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body, "headers": AUTH}
    resp = httpx.post(server[0] + "/v1/chat/completions", timeout=30, **kw)
    if status == 200:  # an edge case that is valid
        assert resp.status_code == 200, resp.text
        return
    err = assert_openai_error(resp, status)
    if param is not None:
        assert (err["param"] or "").startswith(param), err
