"""Safe defaults of the pages: loopback unless --host, and then only with accounts; a login guards every
endpoint; uploads are size-limited and land under the run root; never a share link. The page shows one widget
per field of each form."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tailorkit.cli import main as cli_main
from tailorkit.config.eval import EvalConfig
from tailorkit.config.export import ExportConfig
from tailorkit.config.fields import concern_fields
from tailorkit.config.infer import InferConfig
from tailorkit.config.rlhf import RlhfConfig
from tailorkit.config.train import SftConfig
from tailorkit.config.ui import PageArgs, WebUiConfig, is_loopback
from tailorkit.errors import ConfigError
from tailorkit.ui.chat_tab import EXCLUDE
from tailorkit.ui.server import read_accounts, web_ui
from ui_helpers import ENV, free_port


def test_a_non_loopback_host_without_auth_exits_non_zero_with_the_reason(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tailorkit", "web-ui", "--host", "0.0.0.0", "--run_root",
                           str(tmp_path / "runs")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **ENV})
    assert done.returncode == 2
    assert "--host 0.0.0.0 exposes the page" in done.stderr and "--auth user:password" in done.stderr
    assert not (tmp_path / "runs").exists(), "nothing starts before the check"


@pytest.mark.parametrize("argv", [["app", "--model", "m", "--host", "192.168.1.5"],
                                  ["web-ui", "--server_name", "example.org"], ["web-ui", "--share", "true"]])
def test_other_unsafe_starts_are_refused(argv, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "refusing to start without --auth" in err or "never opens a public share link" in err


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.2") and not is_loopback("myhost")
    PageArgs(host="0.0.0.0", auth="ann:pw")  # accepted with an account


def test_accounts_come_from_auth_or_a_file_with_line_numbered_errors(tmp_path):
    assert read_accounts(PageArgs(auth="ann:pa:ss")) == [("ann", "pa:ss")]
    good = tmp_path / "accounts"
    good.write_text("# team\nann:one\n\nbob:two\n")
    assert read_accounts(PageArgs(auth_file=str(good))) == [("ann", "one"), ("bob", "two")]
    bad = tmp_path / "bad"
    bad.write_text("ann:one\nbob\n")
    with pytest.raises(ConfigError, match=f"{bad}:2: expected 'user:password'"):
        read_accounts(PageArgs(auth_file=str(bad)))
    with pytest.raises(ConfigError, match="not both"):
        PageArgs(auth="a:b", auth_file=str(good))


@pytest.fixture
def guarded_page(tmp_path, monkeypatch):
    """The web UI in this process on a free loopback port, with one account and a 10 kB upload limit."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "restored-after-the-test"))
    port = free_port()
    page = web_ui(WebUiConfig(PageArgs(port=port, auth="ann:s3cret:x", run_root=str(tmp_path / "runs"),
                                       max_upload_mb=0.01)), block=False)
    try:
        yield f"http://127.0.0.1:{port}", page
    finally:
        page.close()


def test_a_login_guards_every_endpoint_and_uploads_are_limited_and_kept_under_the_run_root(guarded_page, tmp_path):
    base, _ = guarded_page
    with httpx.Client() as client:
        for path in ("/config", "/gradio_api/info"):
            assert client.get(base + path).status_code == 401
        assert client.post(base + "/gradio_api/upload", files={"files": ("a.png", b"x")}).status_code == 401
        assert client.post(base + "/login", data={"username": "ann", "password": "wrong"}).status_code == 400
        assert client.post(base + "/login", data={"username": "ann", "password": "s3cret:x"}).status_code == 200
        assert client.get(base + "/config").status_code == 200
        too_big = client.post(base + "/gradio_api/upload", files={"files": ("a.png", b"x" * 20_000)})
        assert too_big.status_code == 413
        small = client.post(base + "/gradio_api/upload", files={"files": ("a.png", b"x" * 2_000)})
        assert small.status_code == 200
        [stored] = small.json()
        assert stored.startswith(str(tmp_path / "runs" / "uploads"))


def test_the_page_has_one_widget_per_field_of_each_form(guarded_page):
    _, page = guarded_page
    ids = {block.elem_id for block in page.blocks.values() if getattr(block, "elem_id", None)}
    forms = {"sft": SftConfig, "rlhf": RlhfConfig, "eval": EvalConfig, "export": ExportConfig}
    for prefix, cls in forms.items():
        missing = [name for name in concern_fields(cls) if f"{prefix}-{name}" not in ids]
        assert not missing, (prefix, missing)
    missing = [name for name in concern_fields(InferConfig) if name not in EXCLUDE and f"chat-{name}" not in ids]
    assert not missing
    assert page.share is False


def test_the_rlhf_form_shows_the_sections_of_the_chosen_algorithm(guarded_page):
    from tailorkit.config.rlhf import RLHF_TYPES
    from tailorkit.ui.page import algorithm_sections

    _, page = guarded_page
    visible = {block.label.removeprefix("advanced: "): block.visible for block in page.blocks.values()
               if type(block).__name__ == "Accordion" and str(block.label).startswith("advanced: ")
               and block.label.removeprefix("advanced: ") in ("preference", "grpo", "ppo", "gkd")}
    assert visible == {"preference": True, "grpo": False, "ppo": False, "gkd": False}  # dpo, the default
    assert algorithm_sections("ppo") == {"grpo", "ppo"} and algorithm_sections("gkd") == {"grpo", "gkd"}
    assert all(algorithm_sections(kind) for kind in RLHF_TYPES), "every algorithm has its section"
