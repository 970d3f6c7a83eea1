"""A running server on 127.0.0.1 over the tiny Qwen2.5-VL with two LoRA adapters (built once per session)."""

from __future__ import annotations

import base64
import io

import pytest

from tailorkit.config import build_config
from tailorkit.config.infer import DeployConfig
from tailorkit.serve.deploy import build_app, start_background

API_KEY = "test-key-123"
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


@pytest.fixture(scope="session")
def media_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("served-media")
    (root / "inside.png").write_bytes(png_bytes((0, 0, 255)))
    (root.parent / "outside.png").write_bytes(png_bytes((0, 255, 0)))
    return root


@pytest.fixture(scope="session")
def server(tiny_vl_dir, tiny_vl_adapters, media_root):
    """(base URL, app) of the default server: API key set, no remote media, local files only in media_root."""
    app, _ = build_app(deploy_config(tiny_vl_dir, tiny_vl_adapters, media_root))
    with start_background(app) as running:
        assert running.url.startswith("http://127.0.0.1:")
        yield running.url, app
