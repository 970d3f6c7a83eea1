"""Export methods on a tiny Qwen2.5-VL + LoRA: export time, weights on disk vs fp32, held-out NLL delta.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=src python bench/export_bench.py [--rows 24]

Each method is one `tailorkit export --adapters X --merge_lora true [--quant_method M]` (merge, write, reload,
verify, quantize, reload, score) of the same adapter; fp8 runs only where a CUDA GPU is visible. The tiny model's
vision tower, embeddings and lm_head stay in full precision, so its size ratio is far above a real model's
(there the decoder layers are almost all of the weights).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

METHODS = [("merge (fp32)", {}), ("gptq 4-bit", {"quant_method": "gptq"}), ("awq 4-bit", {"quant_method": "awq"}),
           ("bnb 4-bit", {"quant_method": "bnb"}), ("bnb 8-bit", {"quant_method": "bnb", "quant_bits": 8}),
           ("fp8", {"quant_method": "fp8"})]


def build(tmp: Path, rows: int) -> tuple[Path, Path, Path]:
    """The tiny Qwen2.5-VL with 4 key/value heads (AWQ needs output sizes that are multiples of 64), a random
    LoRA on it and ``rows`` shapes conversations."""
    import torch
    from transformers import AutoConfig, AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from tailorkit.demo.shapes import write_split
    from tailorkit.models.tiny import build_qwen2_5_vl
    from tailorkit.testing import build_random_lora

    build_qwen2_5_vl(tmp / "stock")
    config = AutoConfig.from_pretrained(tmp / "stock")
    config.text_config.num_key_value_heads = 4
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(tmp / "model")
    AutoProcessor.from_pretrained(tmp / "stock").save_pretrained(tmp / "model")
    adapter = build_random_lora(tmp / "model", tmp / "lora", seed=1)
    return tmp / "model", adapter, write_split(tmp / "data", "train", rows, seed=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=24, help="shapes rows: the last 8 are held out, the rest calibrate")
    a = p.parse_args()
    logging.disable(logging.WARNING)
    import torch

    from tailorkit.config.export import ExportConfig
    from tailorkit.config.loading import build_config
    from tailorkit.export.run import export

    tmp = Path(tempfile.mkdtemp(prefix="tk-export-bench-"))
    model, adapter, data = build(tmp, a.rows)
    results = []
    for name, settings in METHODS:
        if settings.get("quant_method") == "fp8" and not torch.cuda.is_available():
            results.append((name, None))
            continue
        values = dict(model=str(model), adapters=[str(adapter)], merge_lora=True, torch_dtype="float32",
                      output_dir=str(tmp / name.replace(" ", "-")), dataset=[str(data)], verify_n_samples=8,
                      group_size=32, **settings)
        start = time.perf_counter()
        report = export(build_config(ExportConfig, values)).report
        results.append((name, (time.perf_counter() - start, report)))
    _print(results)


def _print(results) -> None:
    fp32 = results[0][1][1]["size_bytes"]
    print(f"\n{'method':<14}{'export s':>10}{'weights MiB':>13}{'vs fp32':>9}{'NLL fp32':>10}{'NLL export':>12}"
          f"{'NLL delta':>11}{'max|dlogit|':>13}")
    for name, got in results:
        if got is None:
            print(f"{name:<14}  needs a CUDA GPU (not measured on this machine)")
            continue
        seconds, r = got
        q = r.get("quantization") or {"nll_reference": float("nan"), "nll_export": float("nan"),
                                      "nll_increase": 0.0, "max_abs_logit_diff": r["merge"]["max_abs_logit_diff"]}
        print(f"{name:<14}{seconds:>10.1f}{r['size_bytes'] / 2**20:>13.2f}{r['size_bytes'] / fp32:>9.2f}"
              f"{q['nll_reference']:>10.4f}{q['nll_export']:>12.4f}{q['nll_increase']:>+11.4f}"
              f"{q['max_abs_logit_diff']:>13.3g}")


if __name__ == "__main__":
    main()
