"""Settings of `tailorkit web-ui` and `tailorkit app` (the browser pages); ms-swift's names as aliases."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..errors import ConfigError
from .fields import arg
from .infer import EngineArgs, GenerationArgs
from .train import ModelArgs


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; any other name or address reaches the network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


@dataclass
class PageArgs:
    host: str = arg("127.0.0.1", "address to bind; a non-loopback address (0.0.0.0 ...) needs --auth or --auth_file",
                    aliases=("server_name",))
    port: int = arg(7860, "port to listen on", aliases=("server_port",))
    auth: str | None = arg(None, "'user:password' asked for before the page opens")
    auth_file: str | None = arg(None, "file of 'user:password' lines, one account per line ('#' comments)")
    share: bool = arg(False, "ms-swift's public gradio share link: refused (a tunnel to the internet); expose the "
                      "page with --host and --auth instead")
    max_upload_mb: float = arg(20.0, "largest file an upload may send, in MB")
    run_root: str = arg("ui_runs", "folder of the runs started from the page (web-ui finds them there again after a "
                        "restart) and of uploaded files (its uploads/ folder)")

    def __post_init__(self):
        if self.share:
            raise ConfigError("--share: tailorkit never opens a public share link; bind a reachable address with "
                              "--host 0.0.0.0 and protect it with --auth user:password (or --auth_file)")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")
        if self.max_upload_mb <= 0:
            raise ConfigError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        if self.auth is not None and self.auth_file is not None:
            raise ConfigError("give --auth or --auth_file, not both")
        if not is_loopback(self.host) and not (self.auth or self.auth_file):
            raise ConfigError(f"--host {self.host} exposes the page (and every run, file and model it can start) to "
                              "the network: refusing to start without --auth user:password or --auth_file FILE; "
                              "use --host 127.0.0.1 to keep it on this machine")


@dataclass
class WebUiConfig:
    """Everything `tailorkit web-ui` needs."""

    page: PageArgs = field(default_factory=PageArgs)


@dataclass
class AppConfig:
    """Everything `tailorkit app` needs: the model to chat with, generation defaults and the page."""

    model: ModelArgs = field(default_factory=ModelArgs)
    engine: EngineArgs = field(default_factory=EngineArgs)
    generation: GenerationArgs = field(default_factory=GenerationArgs)
    page: PageArgs = field(default_factory=PageArgs)

    def __post_init__(self):
        if not self.model.model and not self.engine.ckpt_dir:
            raise ConfigError("--model or --ckpt_dir is required")
