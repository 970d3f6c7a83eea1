"""GPU training benchmark on real model shapes with random weights (never downloaded): tokens/s, MFU, peak memory.

    PYTHONPATH=src python bench/gpu_bench.py [--json results.json]      # on a CUDA GPU (~3 min on one H200)
    PYTHONPATH=src python bench/gpu_bench.py --smoke                    # tiny shapes on CPU: the script's logic

Cases (each in its own process: its own peak memory, and Liger's patches stay in it):
Qwen2.5-VL-3B's shapes (text-only rows through its LLM) on the bundled skewed-length dataset
(bench/skewed_data.py, lengths log-uniform in 32..2048): padded vs packed, Liger on/off, full vs LoRA vs
QLoRA; and Qwen2.5-7B QLoRA at batch 1, sequence 2048, gradient checkpointing: peak memory against the
tutorials' "7B in 9 GB". Rows are encoded by our encoder (the tiny test tokenizer: real shapes, small
vocabulary of ids) and batched by our collators and packing; training is bf16 autocast with fp32 master
weights for the trained parameters, as `tailorkit sft` runs it.

MFU = model FLOPs/s / the GPU's peak dense bf16 FLOP/s (datasheet). Model FLOPs per real token: 6 x the
matmul parameters when they are trained (full), 4 x when frozen (LoRA, QLoRA: forward + input gradients),
plus causal attention, 6 x layers x hidden x n per token of an n-token sample; padding and the recomputation
of gradient checkpointing count for nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Peak dense bf16 FLOP/s by device name (vendor datasheets, without sparsity).
PEAK_BF16 = {"H200": 989.4e12, "H100 PCIe": 756e12, "H100": 989.4e12, "H800": 989.4e12, "GH200": 989.4e12,
             "A100": 312e12, "A800": 312e12, "L40S": 362.05e12, "L4": 121e12, "A10G": 70e12, "RTX 4090": 165.2e12}
TUTORIAL_QLORA_7B_GB = 9.0


@dataclass
class Case:
    name: str
    model: str  # key of SHAPES
    method: str  # full | lora | qlora
    batching: str  # padded | packed
    liger: bool = False
    checkpointing: bool = False
    samples: int = 160  # skewed rows per pass
    batch: int = 4  # padded: samples per step
    pack_tokens: int = 8192  # packed: tokens per row (one row per step)
    fixed_length: int | None = None  # every sample this long instead of skewed lengths


@dataclass
class Result:
    case: str
    model: str
    method: str
    batching: str
    liger: bool
    tokens_per_s: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    steps: int = 0
    tokens: int = 0
    padding: float = 0.0
    error: str | None = None
    skipped: str | None = None


def text_shape(smoke: bool, **real) -> dict:
    tiny = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)
    return {**(tiny if smoke else real), "max_position_embeddings": 32768, "rms_norm_eps": 1e-6}


def qwen2_5_7b(smoke: bool):
    from transformers import Qwen2Config

    shape = text_shape(smoke, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4)
    return Qwen2Config(vocab_size=512 if smoke else 152064, rope_theta=1e6, tie_word_embeddings=False, **shape)


def qwen2_5_vl_3b(smoke: bool):
    from transformers import Qwen2_5_VLConfig

    text = text_shape(smoke, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                      num_attention_heads=16, num_key_value_heads=2)
    mrope = [2, 3, 3] if smoke else [16, 24, 24]
    text.update(vocab_size=512 if smoke else 151936, rope_parameters={"rope_type": "default", "mrope_section": mrope,
                                                    "rope_theta": 1e6})
    vision = (dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                   fullatt_block_indexes=[1], window_size=56) if smoke else
              dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                   fullatt_block_indexes=[7, 15, 23, 31], window_size=112))
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)


SHAPES = {"qwen2.5-vl-3b": qwen2_5_vl_3b, "qwen2.5-7b": qwen2_5_7b}

# Most telling first: a time limit on the whole run cuts the tail, and every finished row is kept.
CASES = [
    Case("vl3b-full-padded", "qwen2.5-vl-3b", "full", "padded"),
    Case("vl3b-full-packed", "qwen2.5-vl-3b", "full", "packed"),
    Case("7b-qlora-b1-s2048-gc", "qwen2.5-7b", "qlora", "padded", checkpointing=True, samples=4, batch=1,
         fixed_length=2048),
    Case("vl3b-full-packed-liger", "qwen2.5-vl-3b", "full", "packed", liger=True),
    Case("vl3b-lora-packed", "qwen2.5-vl-3b", "lora", "packed"),
    Case("vl3b-lora-packed-liger", "qwen2.5-vl-3b", "lora", "packed", liger=True),
    Case("vl3b-qlora-packed", "qwen2.5-vl-3b", "qlora", "packed"),
]


def smoke_case(case: Case) -> Case:
    """The same case at CPU size: a few short samples."""
    from dataclasses import replace

    return replace(case, samples=min(case.samples, 12), pack_tokens=2048,
                   fixed_length=case.fixed_length and 256)


@lru_cache(maxsize=1)
def test_tokenizer():
    """The tiny test tokenizer (saved with a tiny model, whose weights are not used)."""
    from transformers import AutoTokenizer

    from tailorkit.models.tiny import build_qwen2

    folder = tempfile.mkdtemp(prefix="gpu-bench-tok-")
    build_qwen2(folder)
    return AutoTokenizer.from_pretrained(folder)


def tokenizer_and_rows(case: Case, seed: int = 0):
    """The tiny test tokenizer and the skewed-length rows (or rows of exactly ``fixed_length`` tokens)."""
    from skewed_data import skewed_rows

    tok = test_tokenizer()
    low, high = (case.fixed_length, case.fixed_length) if case.fixed_length else (32, 2048)
    return tok, skewed_rows(tok, case.samples, seed=seed, low=low, high=high)


def matmul_params(llm: torch.nn.Module, head: torch.nn.Module) -> int:
    """Weights of the LLM's linear layers (quantized ones counted at their real size) and of the lm_head."""
    total = 0
    for module in [*llm.modules(), head]:
        weight = getattr(module, "weight", None)
        if weight is not None and weight.dim() == 2 and module is not getattr(llm, "embed_tokens", None):
            shape = getattr(getattr(weight, "quant_state", None), "shape", None)
            total += shape.numel() if shape is not None else weight.numel()
    return total


def build(case: Case, smoke: bool, device: str):
    """The model (random weights, built on ``device``), its language model and lm_head."""
    import transformers

    config = SHAPES[case.model](smoke)
    auto = transformers.AutoModelForImageTextToText if case.model.startswith("qwen2.5-vl") else \
        transformers.AutoModelForCausalLM
    dtype = torch.float32 if case.method == "full" and device == "cpu" else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device):
        model = auto.from_config(config, dtype=dtype)
    model.to(device)  # in case this transformers builds outside the device context
    llm = model.model.language_model if hasattr(model.model, "language_model") else model.model
    return model, llm, model.lm_head


def quantize_nf4(llm: torch.nn.Module, device: str) -> int:
    """Replace the LLM's linear layers by bitsandbytes NF4 with double quantization, one at a time."""
    import bitsandbytes as bnb

    count = 0
    for parent in list(llm.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True,
                                  device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data.to("cpu" if device == "cpu" else device),
                                         requires_grad=False, quant_type="nf4", compress_statistics=True,
                                         module=q).to(device)
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, q)
            count += 1
    return count


def prepare_method(case: Case, model, llm, device: str):
    """Freeze / adapt / quantize as the case says; returns the model to train."""
    from peft import LoraConfig, get_peft_model

    from tailorkit.train.precision import upcast_trainable_to_fp32

    if case.method == "qlora":
        quantize_nf4(llm, device)
    if case.method in ("lora", "qlora"):
        model.requires_grad_(False)
        targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)" \
            if hasattr(model.model, "language_model") else "all-linear"
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    upcast_trainable_to_fp32(model)
    if case.checkpointing:  # activation_checkpointing_enable since transformers 5.2x, gradient_... before
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable(**{f"{enable.__name__.split('_enable')[0]}_kwargs": {"use_reentrant": False}})
        model.enable_input_require_grads()
    if case.liger:
        from transformers.integrations.liger import apply_liger_kernel

        apply_liger_kernel(model, None)
    return model


def batches(case: Case, tok, rows, model) -> list[dict]:
    """Our encoder, then our padded collator (random order) or our packing into ``pack_tokens`` rows."""
    from tailorkit.data.collate import Collator
    from tailorkit.data.encode import encode
    from tailorkit.data.formats import parse_row
    from tailorkit.data.packing import FlatCollator, pack, to_segments
    from tailorkit.train.attention import use_packed_attention

    samples = [encode(parse_row(r), tok) for r in rows]
    if case.batching == "padded":
        random.Random(0).shuffle(samples)
        collate = Collator(tok.pad_token_id)
        return [collate(samples[i:i + case.batch]) for i in range(0, len(samples), case.batch)]
    use_packed_attention(model, None)
    packs, _ = pack(to_segments(samples, model), case.pack_tokens)
    collate = FlatCollator(tok.pad_token_id)
    return [collate([p]) for p in packs]


def step(model, batch: dict, liger: bool, device: str) -> None:
    """One forward + backward of a batch under bf16 autocast (as the Trainer runs it)."""
    from tailorkit.train.losses import sft_loss

    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch.pop("labels")
    num_items = int((labels[:, 1:] != -100).sum())
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        if liger:
            loss = model(**batch, labels=labels, num_items_in_batch=num_items, use_cache=False).loss
        else:
            loss = sft_loss(model(**batch, use_cache=False).logits, labels, num_items)
    loss.backward()


def real_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()


def sample_lengths(batch: dict) -> list[int]:
    """Lengths of the samples of a batch (rows of a padded batch; segments of a packed row)."""
    if "attention_mask" in batch:
        return batch["attention_mask"].sum(dim=1).tolist()
    pos = batch["position_ids"][0] if batch["position_ids"].dim() == 3 else batch["position_ids"]
    starts = (pos[0] == 0).nonzero().flatten().tolist() + [pos.shape[-1]]
    return [b - a for a, b in zip(starts, starts[1:])]


def model_flops(batches_: list[dict], params: int, layers: int, hidden: int, trained: bool) -> float:
    per_token = (6 if trained else 4) * params
    return sum(per_token * n + 6 * layers * hidden * n * n for b in batches_ for n in sample_lengths(b))


def peak_flops(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run_case(case: Case, smoke: bool) -> Result:
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    result = Result(case.name, case.model, case.method, case.batching, case.liger)
    if case.liger and device == "cpu":
        result.skipped = "Liger's kernels need CUDA"
        return result
    case = smoke_case(case) if smoke else case
    tok, rows = tokenizer_and_rows(case)
    model, llm, head = build(case, smoke, device)
    params = matmul_params(llm, head)
    model = prepare_method(case, model, llm, device)
    model.train()
    data = batches(case, tok, rows, model)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=1e-5, fused=device == "cuda")
    step(model, data[0], case.liger, device)  # warm-up: kernels compiled/tuned, allocator settled
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for batch in data:
        step(model, batch, case.liger, device)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
        result.peak_gib = torch.cuda.max_memory_allocated() / 2**30
    seconds = time.perf_counter() - start
    text = llm.config
    result.steps, result.tokens = len(data), sum(real_tokens(b) for b in data)
    result.padding = 1 - result.tokens / sum(b["input_ids"].numel() for b in data)
    result.tokens_per_s = result.tokens / seconds
    flops = model_flops(data, params, text.num_hidden_layers, text.hidden_size, case.method == "full")
    peak = peak_flops(device)
    result.mfu = flops / seconds / peak if peak else None
    return result


def run_in_child(case: Case, smoke: bool, timeout: float) -> Result:
    """One case in a fresh process; a failure or time-out becomes that row's error."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", case.name, *(["--smoke"] if smoke else [])]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Result(case.name, case.model, case.method, case.batching, case.liger, error=f"timed out ({timeout}s)")
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return Result(case.name, case.model, case.method, case.batching, case.liger, error=last[:160])
    return Result(**json.loads(line[len("RESULT "):]))


def fmt(value, width: int, digits: int, suffix: str = "") -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width - len(suffix)}.{digits}f}{suffix}"


def table(results: list[Result], device: str) -> str:
    """The results as a fixed-width table, then the ratios the tutorials and peers claim."""
    head = f"{'case':<24} {'method':<6} {'batching':<8} {'liger':<5} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9} " \
           f"{'padding':>8} {'steps':>5}"
    lines = [f"gpu_bench on {device}", head, "-" * len(head)]
    for r in results:
        if r.error or r.skipped:
            what = f"failed: {r.error}" if r.error else f"skipped: {r.skipped}"
            lines.append(f"{r.case:<24} {r.method:<6} {r.batching:<8} {str(r.liger):<5} {what}")
            continue
        lines.append(f"{r.case:<24} {r.method:<6} {r.batching:<8} {str(r.liger):<5} {fmt(r.tokens_per_s, 10, 0)} "
                     f"{fmt(r.mfu and 100 * r.mfu, 6, 1, '%')} {fmt(r.peak_gib, 9, 2)} "
                     f"{fmt(100 * r.padding, 8, 1, '%')} {r.steps:>5}")
    lines += ratios(results)
    return "\n".join(lines)


def ratios(results: list[Result]) -> list[str]:
    by = {r.case: r for r in results if not (r.error or r.skipped)}
    out = []
    for a, b, what in (("vl3b-full-packed", "vl3b-full-padded", "packed / padded tokens/s (full)"),
                       ("vl3b-full-packed-liger", "vl3b-full-packed", "Liger on / off tokens/s (full, packed)"),
                       ("vl3b-lora-packed-liger", "vl3b-lora-packed", "Liger on / off tokens/s (LoRA, packed)")):
        if a in by and b in by:
            out.append(f"{what}: {by[a].tokens_per_s / by[b].tokens_per_s:.2f}x; peak memory "
                       f"{by[a].peak_gib / by[b].peak_gib:.2f}x" if by[a].peak_gib and by[b].peak_gib else
                       f"{what}: {by[a].tokens_per_s / by[b].tokens_per_s:.2f}x")
    q = by.get("7b-qlora-b1-s2048-gc")
    if q and q.peak_gib:
        gb = q.peak_gib * 2**30 / 1e9
        out.append(f"7B QLoRA, batch 1, seq 2048, gradient checkpointing: peak {gb:.1f} GB vs the tutorials' "
                   f"{TUTORIAL_QLORA_7B_GB:.0f} GB")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script, measures nothing")
    ap.add_argument("--case", help="run one case in this process and print its RESULT line")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--timeout", type=float, default=120, help="seconds per case")
    a = ap.parse_args(argv)
    cases = {c.name: c for c in CASES}
    if a.case:
        print("RESULT " + json.dumps(asdict(run_case(cases[a.case], a.smoke))))
        return 0
    if not a.smoke and not torch.cuda.is_available():
        print("gpu_bench: no CUDA GPU visible; run it on a GPU machine (or --smoke for the CPU check)")
        return 0
    device = "cpu (smoke: tiny shapes)" if a.smoke else torch.cuda.get_device_name()
    results = []
    for case in CASES:
        # On the GPU each case has its own process (its own peak memory; Liger's patches stay there); the
        # smoke check runs them here, one after the other.
        results.append(run_case(case, True) if a.smoke else run_in_child(case, False, a.timeout))
        print(f"gpu_bench: {case.name} done", flush=True)
        if a.json:  # after every case, so that a run stopped by a time limit keeps its finished rows
            Path(a.json).write_text(json.dumps({"device": device, "results": [asdict(r) for r in results]},
                                               indent=2))
    print(table(results, device))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
