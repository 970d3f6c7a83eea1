"""--push_to_hub: clear errors before any work; an upload to a stand-in hub on 127.0.0.1 (never the network)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from export_helpers import run_export

from tailorkit.errors import ConfigError

HUB = dict(push_to_hub=True, hub_model_id="me/tiny-merged")


def test_offline_push_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.is_offline_mode", lambda: True)  # as HF_HUB_OFFLINE=1 makes it
    with pytest.raises(ConfigError, match="offline mode .*HF_HUB_OFFLINE"):
        run_export(tmp_path / "out", model=str(tmp_path / "no-such-model"), **HUB)  # no model is looked at
    assert not (tmp_path / "out").exists()


def test_push_without_a_token_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.is_offline_mode", lambda: False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(ConfigError, match="needs a hub token"):
        run_export(tmp_path / "out", model=str(tmp_path / "no-such-model"), **HUB)


def test_push_needs_a_repository_name(tmp_path):
    with pytest.raises(ConfigError, match="--hub_model_id"):
        run_export(tmp_path / "out", model="m", push_to_hub=True)


class StandInHub(BaseHTTPRequestHandler):
    """The three hub endpoints huggingface_hub's create_repo + upload_folder call; records what arrives."""

    calls: list = []
    files: dict = {}

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.calls.append((self.path, self.headers.get("Authorization")))
        if self.path == "/api/repos/create":
            request = json.loads(body)
            return self._json({"url": f"http://{self.headers['Host']}/me/{request['name']}"})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in files]})
        if "/commit/" in self.path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return self._json({"commitUrl": f"http://{self.headers['Host']}/me/tiny-merged/commit/abc",
                               "commitOid": "a" * 40, "pullRequestUrl": None})
        self.send_error(404)

    def _json(self, data):
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_push_uploads_the_verified_export_to_a_stand_in_hub(tiny_text_dir, tiny_vl_adapters, tmp_path):
    from export_helpers import random_adapter
    from transformers import AutoModelForCausalLM

    adapter = random_adapter(AutoModelForCausalLM.from_pretrained(tiny_text_dir), tmp_path / "lora", seed=1,
                             target_modules=["q_proj"])
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_TOKEN", None)
    out = tmp_path / "merged"
    try:
        proc = subprocess.run([sys.executable, "-m", "tailorkit", "export", "--model", str(tiny_text_dir),
                               "--adapters", str(adapter), "--merge_lora", "true", "--torch_dtype", "float32",
                               "--output_dir", str(out), "--push_to_hub", "true", "--hub_model_id", "me/tiny-merged",
                               "--hub_token", "hf_test", "--hub_private_repo", "true"],
                              env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "uploaded to http://127.0.0.1" in proc.stdout
    assert all(auth == "Bearer hf_test" for _, auth in StandInHub.calls)
    local = {p.name: p.read_bytes() for p in out.iterdir()}
    assert StandInHub.files == local and "export_report.json" in local and "model.safetensors" in local
