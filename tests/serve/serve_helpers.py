"""Helpers of the server tests (a module of its own: test modules import it by name)."""

from __future__ import annotations

import base64
import io

from tailorkit.config import build_config
from tailorkit.config.infer import DeployConfig

API_KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_BODY = 64 * 1024


def png_bytes(color=(255, 0, 0), size=56) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def deploy_config(model_dir, adapters: dict, media_root, **over) -> DeployConfig:
    values = {"model": str(model_dir), "adapters": [f"{n}={p}" for n, p in adapters.items()],
              "torch_dtype": "float32", "served_model_name": "tiny-vl", "api_key": API_KEY,
              "media_root": str(media_root), "max_request_bytes": MAX_BODY, "max_tokens_limit": 64,
              "max_new_tokens": 16, "max_batch_size": 8, **over}
    return build_config(DeployConfig, values)


def image_chat(url: str, text: str = "What shape is this?", **kw) -> dict:
    return {"model": "tiny-vl", "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}], **kw}


def assert_openai_error(resp, status: int) -> dict:
    """The response has ``status`` and OpenAI's error JSON, with a message free of Python object reprs."""
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and "type" in err
    assert " at 0x" not in err["message"], err["message"]
    return err
