"""Load benchmark of `tailorkit deploy`: concurrent clients against a server on 127.0.0.1.

Prints requests/s and latency percentiles with the batching queue (--max_batch_size N) and, for comparison,
with one request at a time (batch size 1). Uses a tiny random Qwen2.5-VL unless --model is given.
--mix sends text chats, image chats, streamed image chats and text completions in turn, and counts
failures by kind (4xx, 5xx, dropped connections, streams that end in an error).

    python bench/serve_load.py --clients 32 --requests 320 --max_tokens 16
    python bench/serve_load.py --mix --clients 32 --requests 960 --skip_unbatched
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import tempfile

from _measure import model_or_tiny_vl

from tailorkit.config import build_config
from tailorkit.config.infer import DeployConfig
from tailorkit.serve.deploy import build_app, start_background
from tailorkit.testing import chat_calls, mixed_calls, run_load


def image_uri(size: int = 56) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 40, 40)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def calls(n: int, args) -> list:
    if args.mix:
        return mixed_calls(n, args.max_tokens, "bench", image_uri())
    return chat_calls(n, args.max_tokens, "bench")


def measure(model_dir: str, batch: int, args) -> None:
    cfg = build_config(DeployConfig, {"model": model_dir, "served_model_name": "bench", "max_batch_size": batch,
                                      "torch_dtype": args.torch_dtype, "max_new_tokens": args.max_tokens})
    app, _ = build_app(cfg)
    with start_background(app) as running:
        asyncio.run(run_load(running.url, calls(args.clients, args), clients=args.clients))
        report = asyncio.run(run_load(running.url, calls(args.requests, args), clients=args.clients))
    sizes = app.state.queue.stats.batch_sizes
    print(f"max_batch_size {batch:>3}: {report.summary()}; mean batch {sum(sizes) / max(len(sizes), 1):.1f}")
    if report.failures:
        print("  first failures:", *report.failures[:3], sep="\n    ")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory (default: a tiny random Qwen2.5-VL built in a temp dir)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=320)
    p.add_argument("--max_tokens", type=int, default=16)
    p.add_argument("--max_batch_size", type=int, default=32)
    p.add_argument("--torch_dtype", default="float32")
    p.add_argument("--skip_unbatched", action="store_true", help="do not run the batch-size-1 comparison")
    p.add_argument("--mix", action="store_true", help="text, image, streamed image and completion requests in turn")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = model_or_tiny_vl(args.model, tmp)
        kind = "mixed (text, image, streamed image, completion)" if args.mix else "text chat"
        print(f"{args.clients} clients, {args.requests} {kind} requests, max_tokens {args.max_tokens}, model {model}")
        measure(model, args.max_batch_size, args)
        if not args.skip_unbatched:
            measure(model, 1, args)


if __name__ == "__main__":
    main()
