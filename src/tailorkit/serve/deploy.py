"""`tailorkit deploy`: build the engine, the app, and run it with uvicorn (127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..config.infer import DeployConfig
from ..infer.load import build_engine
from ..infer.run import settings_from_args
from .app import ServerOptions, create_app
from .media import MediaPolicy
from .protocol import Limits


def server_options(cfg: DeployConfig, model_path: str) -> ServerOptions:
    d = cfg.deploy
    return ServerOptions(
        base_name=d.served_model_name or Path(model_path).name,
        limits=Limits(default=settings_from_args(cfg.generation), max_tokens=d.max_tokens_limit),
        policy=MediaPolicy(allow_remote=d.allow_remote_media, media_root=d.media_root,
                           max_remote_bytes=d.max_remote_media_bytes, max_image_pixels=d.max_image_pixels,
                           max_request_pixels=d.max_request_pixels, max_images=d.max_images_per_request),
        api_key=d.api_key, max_request_bytes=d.max_request_bytes, max_batch_size=cfg.engine.max_batch_size,
        batch_wait_s=d.batch_wait_ms / 1000, max_queue=d.max_queue, max_concurrent_requests=d.max_concurrent_requests,
        request_timeout_s=d.request_timeout_s or None, enable_docs=d.enable_docs)


def build_app(cfg: DeployConfig):
    """The app for ``cfg`` (engine loaded) and the model names it serves."""
    engine, spec = build_engine(cfg.model, cfg.engine)
    opts = server_options(cfg, spec.model.model)
    return create_app(engine, opts), [opts.base_name, *engine.adapter_names]


def deploy(cfg: DeployConfig) -> None:
    """Serve until interrupted."""
    import uvicorn

    app, names = build_app(cfg)
    if cfg.deploy.host not in ("127.0.0.1", "localhost", "::1") and not cfg.deploy.api_key:
        print(f"[tailorkit] warning: serving on {cfg.deploy.host} without --api_key: anyone who can reach this "
              "address can use the model")
    print(f"[tailorkit] serving {', '.join(names)} on http://{cfg.deploy.host}:{cfg.deploy.port}/v1")
    uvicorn.run(app, host=cfg.deploy.host, port=cfg.deploy.port, log_level="info")


@dataclass
class BackgroundServer:
    """A uvicorn server on a thread (tests, benchmarks); ``url`` is its base URL."""

    server: object
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_background(app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 60) -> BackgroundServer:
    """Start ``app`` on ``host`` (an ephemeral port by default) and wait until it accepts connections."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="tailorkit-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    sock = server.servers[0].sockets[0]
    bound_host, bound_port = sock.getsockname()[:2]
    return BackgroundServer(server, thread, f"http://{bound_host}:{bound_port}")
