"""Per-family numbers on the tiny random builds: build/load time, parameters per component, encoded length
of one two-turn conversation with a 28x28 image (media tokens included) and one forward+backward time.

    PYTHONPATH=src OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python bench/families.py [family ...]
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch
from PIL import Image

from tailorkit.config.train import ModelArgs
from tailorkit.data.collate import Collator
from tailorkit.data.encode import encode
from tailorkit.data.formats import parse_row
from tailorkit.models.load import load_bundle
from tailorkit.models.registry import FAMILIES


def measure(name: str, image) -> str:
    fam = FAMILIES[name]
    out = tempfile.mkdtemp(prefix=f"bench-{name}-")
    t0 = time.perf_counter()
    try:
        fam.build_tiny(out)
    except ImportError as e:
        return f"{name:16s} not built: {e}"
    t1 = time.perf_counter()
    bundle = load_bundle(ModelArgs(model=out, torch_dtype="float32", trust_remote_code=fam.trust_remote_code))
    t2 = time.perf_counter()
    first = "<image>What colour is the shape?" if fam.is_multimodal else "What colour is the shape?"
    row = {"messages": [{"role": "user", "content": first}, {"role": "assistant", "content": "red"},
                        {"role": "user", "content": "What shape is this?"}, {"role": "assistant", "content": "a square"}]}
    if fam.is_multimodal:
        row["images"] = [image]
    enc = encode(parse_row(row), bundle.processor)
    t3 = time.perf_counter()
    batch = Collator(bundle.tokenizer.pad_token_id)([enc])
    loss = bundle.model(**batch).loss
    loss.backward()
    t4 = time.perf_counter()
    counts = {c: 0 for c in ("vision", "aligner", "llm", "lm_head", "other")}
    for n, p in bundle.model.named_parameters():
        counts[fam.component_of(n)] += p.numel()
    parts = " ".join(f"{c}={v / 1e3:.1f}k" for c, v in counts.items() if v)
    return (f"{name:16s} build {t1 - t0:5.2f}s load {t2 - t1:5.2f}s encode {1e3 * (t3 - t2):6.1f}ms "
            f"fwd+bwd {1e3 * (t4 - t3):6.1f}ms tokens {len(enc):4d} supervised {enc.num_supervised:2d} "
            f"loss {loss.item():.3f} | {parts}")


def main(names: list[str]) -> None:
    torch.manual_seed(0)
    image = Image.new("RGB", (28, 28), "white")
    image.paste((255, 0, 0), (7, 7, 21, 21))
    for name in names or list(FAMILIES):
        print(measure(name, image), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
