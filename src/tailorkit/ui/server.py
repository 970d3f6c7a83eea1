"""`tailorkit web-ui` and `tailorkit app`: the checks that keep the page safe, then gradio's server.

Safe by default: 127.0.0.1; a non-loopback --host is refused without accounts (PageArgs checks it before
anything starts); never a share link, analytics or monitoring endpoint; uploads limited to --max_upload_mb
and stored in ``<run_root>/uploads``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config.ui import AppConfig, PageArgs, WebUiConfig
from ..errors import ConfigError

UPLOADS = "uploads"


def parse_account(text: str, source: str) -> tuple[str, str]:
    """'user:password' -> (user, password); the password may hold ':'."""
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise ConfigError(f"{source}: expected 'user:password' with both parts non-empty")
    return user.strip(), password


def read_accounts(page: PageArgs) -> list[tuple[str, str]]:
    """The accounts of --auth or --auth_file (none: the page opens without a login, on loopback only)."""
    if page.auth:
        return [parse_account(page.auth, "--auth")]
    if not page.auth_file:
        return []
    path = Path(page.auth_file)
    if not path.is_file():
        raise ConfigError(f"--auth_file {path} does not exist")
    accounts = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            accounts.append(parse_account(line.strip(), f"{path}:{k}"))
    if not accounts:
        raise ConfigError(f"--auth_file {path} holds no 'user:password' line")
    return accounts


def prepare_root(page: PageArgs) -> Path:
    """The run root (created), with gradio's upload folder inside it.

    gradio reads its upload folder from GRADIO_TEMP_DIR only (when its server starts and as each component
    is made), so it is set here, from --run_root, before the page is built.
    """
    root = Path(page.run_root).expanduser().resolve()
    (root / UPLOADS).mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(root / UPLOADS)
    return root


def serve(blocks, page: PageArgs, accounts: list[tuple[str, str]], block: bool = True):
    """Run gradio's server until it is stopped (Ctrl-C); ``block=False`` returns the running page (tests)."""
    print(f"[tailorkit] page on http://{page.host}:{page.port}/"
          + (f" (login required: {len(accounts)} account(s))" if accounts else " (no login: this machine only)"),
          flush=True)
    blocks.queue(default_concurrency_limit=4)
    blocks.launch(server_name=page.host, server_port=page.port, share=False, auth=accounts or None,
                  max_file_size=int(page.max_upload_mb * 1024 * 1024), show_error=True, footer_links=[],
                  run_history=False, enable_monitoring=False, ssr_mode=False, pwa=False, mcp_server=False,
                  inbrowser=False, quiet=True, prevent_thread_lock=not block)
    return blocks


def web_ui(cfg: WebUiConfig, block: bool = True):
    """`tailorkit web-ui`: train, watch, chat, evaluate and export from a browser."""
    accounts = read_accounts(cfg.page)
    root = prepare_root(cfg.page)
    from .page import build_web_ui

    print(f"[tailorkit] runs under {root}")
    return serve(build_web_ui(root, Path.cwd()), cfg.page, accounts, block)


def app(cfg: AppConfig, block: bool = True):
    """`tailorkit app`: a chat page over one model (and its checkpoint or adapters), for demos."""
    accounts = read_accounts(cfg.page)
    prepare_root(cfg.page)
    from .chat import ChatModel
    from .forms import form_fields, to_widget
    from .page import build_app

    chat = ChatModel()
    print(f"[tailorkit] loaded {chat.load(cfg.model, cfg.engine)}")
    values = {f.name: to_widget(f, getattr(cfg.generation, f.name)) for f in form_fields(AppConfig)
              if f.concern == "generation"}
    return serve(build_app(chat, values), cfg.page, accounts, block)
