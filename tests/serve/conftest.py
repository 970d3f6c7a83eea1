"""A running server on 127.0.0.1 over the tiny Qwen2.5-VL with two LoRA adapters (built once per session)."""

from __future__ import annotations

import pytest
from serve_helpers import deploy_config, png_bytes

from tailorkit.serve.deploy import build_app, start_background


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
