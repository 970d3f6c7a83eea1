"""Packing is exact: packed / padding-free batches give the per-token losses and gradients of the same
samples run one by one, for a text model and Qwen2.5-VL with images, with the settings a user gets
by default (the model config's use_cache left on). And the loss is per supervised token across
batching and gradient accumulation: 8x1, 1x8, packed and padding-free give the same step."""

from __future__ import annotations

import random

import pytest
import torch

from tailorkit.config import SftConfig
from tailorkit.config.loading import build_config
from tailorkit.data.collate import Collator
from tailorkit.data.encode import encode, encode_text
from tailorkit.data.formats import parse_row, parse_text_row
from tailorkit.demo.shapes import COLOURS, SHAPES, draw
from tailorkit.models.load import load_bundle
from tailorkit.models.registry import FAMILIES
from tailorkit.train.batching import train_batches
from tailorkit.train.losses import shifted_token_nll

TOL = 1e-5
WORDS = "the quick brown fox jumps over the lazy dog and a cat tell me a story".split()


def _text_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30)))
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25)))
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return rows


def _vl_rows(seed: int) -> list[dict]:
    rng = random.Random(seed)
    colour, shape = list(COLOURS), list(SHAPES)
    img = lambda size=(56, 56): draw(rng.choice(colour), rng.choice(shape), rng).resize(size)  # noqa: E731
    return [
        {"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                      {"role": "assistant", "content": "red"}], "images": [img()]},
        {"messages": [{"role": "user", "content": "Tell me a story"},
                      {"role": "assistant", "content": "the cat and the dog"}]},
        {"messages": [{"role": "user", "content": "<image><image>What shape is this?"},
                      {"role": "assistant", "content": "square"}], "images": [img((84, 56)), img()]},
        {"messages": [{"role": "user", "content": "<image>Describe the picture."},
                      {"role": "assistant", "content": "a blue circle"}], "images": [img((56, 112))]},
    ]


def _setup(model_dir, rows, **settings):
    """Default user settings (plus ``settings``), the loaded bundle and the encoded samples."""
    cfg = build_config(SftConfig, {"model": str(model_dir), "dataset": ["unused.jsonl"], "train_type": "full",
                                   **settings})
    bundle = load_bundle(cfg.model)
    bundle.model.train()
    samples = [encode_text(parse_text_row(r), bundle.tokenizer) if "text" in r
               else encode(parse_row(r), bundle.processor) for r in rows]
    return cfg, bundle, samples


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _one_by_one(model, samples, pad_id):
    """Per-token NLL of each sample alone (padded collator, stock path), laid out as a packed row would be."""
    total = sum(sum(1 for x in s.labels[1:] if x != -100) for s in samples)  # a sample's first token is never predicted
    rows = []
    for s in samples:
        batch = Collator(pad_id)([s])
        labels = batch.pop("labels")
        nll = shifted_token_nll(model(**batch).logits, labels)[0]
        (nll.sum() / total).backward()
        rows.append(torch.cat([nll.detach(), torch.zeros(1)]))  # the boundary position predicts nothing
    return torch.cat(rows)[:-1], _grads(model)


def _flat(model, batch):
    batch = dict(batch)
    labels = batch.pop("labels")
    nll = shifted_token_nll(model(**batch).logits, labels)  # no use_cache argument: the config default
    (nll.sum() / (labels[:, 1:] != -100).sum()).backward()
    return nll.detach(), _grads(model)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _check_parity(model_dir, rows, mode: str, **settings):
    cfg, bundle, samples = _setup(model_dir, rows, **{mode: True}, **settings)
    model, pad_id = bundle.model, bundle.tokenizer.pad_token_id
    assert getattr(model.config.get_text_config(), "use_cache", True)  # the user's default: the trap packing must survive
    padded = Collator(pad_id)(samples)
    padded_ref, padded_ref_grads = _flat(model, padded)
    items, collator, _ = train_batches(cfg, model, samples, pad_id)
    # Evaluation stays padded; the switched attention must give it exactly what stock sdpa gave.
    padded_nll, padded_grads = _flat(model, padded)
    assert (padded_nll - padded_ref).abs().max().item() <= TOL and _max_diff(padded_grads, padded_ref_grads) <= TOL
    order = [s.enc for x in items for s in (x if isinstance(x, list) else [x])]
    assert sorted(map(id, order)) == sorted(map(id, samples))
    ref_nll, ref_grads = _one_by_one(model, order, pad_id)
    nll, grads = _flat(model, collator(items))
    nll = nll[0]
    assert nll.shape == ref_nll.shape
    assert (nll - ref_nll).abs().max().item() <= TOL
    # The same parameters get gradients; all of them unless the model leaves some unused (LLaVA's and
    # DeepSeek-VL's vision layers after the one they read features from).
    assert grads.keys() == ref_grads.keys()
    assert len(grads) == len(list(model.parameters())) or bundle.family.is_multimodal
    assert _max_diff(grads, ref_grads) <= TOL
    return bundle, collator(items), ref_nll


@pytest.mark.parametrize("mode,attn", [("packing", None), ("padding_free", None), ("packing", "eager")])
def test_text_packed_equals_one_by_one(tiny_text_dir, mode, attn):
    settings = {"attn_impl": attn} if attn else {}
    bundle, batch, ref_nll = _check_parity(tiny_text_dir, _text_rows(6, seed=0), mode, **settings)
    # The same row under stock sdpa with the config's use_cache: samples leak into each other.
    bundle.model.set_attn_implementation("sdpa")
    leaked, _ = _flat(bundle.model, batch)
    assert (leaked[0] - ref_nll).abs().max().item() > 1e-3


def test_pretraining_rows_packed_equal_one_by_one(tiny_text_dir):
    # Every token is supervised in `pt`: a packed row must not predict a sample's first token from the previous one.
    rows = [{"text": " ".join(m["content"] for m in r["messages"])} for r in _text_rows(5, seed=4)]
    _check_parity(tiny_text_dir, rows, "packing")


@pytest.mark.parametrize("mode", ["packing", "padding_free"])
def test_qwen2_5_vl_packed_with_images_equals_one_by_one(tiny_vl_dir, mode):
    _check_parity(tiny_vl_dir, _vl_rows(seed=1), mode)


def _trainer_step(cfg, model, items, collator, tmp_path):
    """Loss and gradients of one optimizer step through our Trainer (batch counting, GA scaling)."""
    from tailorkit.train.algorithm import SftAlgorithm
    from tailorkit.train.trainer import Trainer, training_arguments

    cfg.train.output_dir = str(tmp_path)
    trainer = Trainer(model=model, args=training_arguments(cfg, False), train_dataset=items,
                      data_collator=collator, algorithm=SftAlgorithm())
    ga = cfg.train.gradient_accumulation_steps
    trainer.current_gradient_accumulation_steps = ga
    batches, num_items = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), ga, trainer.args.device)
    assert len(batches) == ga
    loss = sum(trainer.training_step(model, b, num_items).item() for b in batches)
    return loss, _grads(model)


@pytest.mark.slow
def test_loss_and_gradients_invariant_to_batching_and_accumulation(tiny_text_dir, tmp_path):
    rows = _text_rows(8, seed=3)
    results = {}
    for name, settings in {
        "8x1": dict(per_device_train_batch_size=8, gradient_accumulation_steps=1),
        "1x8": dict(per_device_train_batch_size=1, gradient_accumulation_steps=8),
        "padding_free": dict(per_device_train_batch_size=8, padding_free=True),
        "packed": dict(packing=True, packing_length=160, max_length=160),
    }.items():
        cfg, bundle, samples = _setup(tiny_text_dir, rows, **settings)
        items, collator, report = train_batches(cfg, bundle.model, samples, bundle.tokenizer.pad_token_id)
        if report is not None:
            assert report.packs > 1 and report.samples_out == 8
            cfg.train.per_device_train_batch_size = report.packs  # all packs in one step, like 8x1
        results[name] = _trainer_step(cfg, bundle.model, items, collator, tmp_path / name)
    loss0, grads0 = results["8x1"]
    for name, (loss, grads) in results.items():
        assert abs(loss - loss0) <= TOL, name
        assert _max_diff(grads, grads0) <= TOL, name


def _family_rows(seed: int) -> list[dict]:
    """Three samples for every vision family: two with an image of different sizes, one text-only between them."""
    rows = _vl_rows(seed)
    return [rows[0], rows[1], rows[3]]


PACKED_FAMILIES = [f.name for f in FAMILIES.values()
                   if f.is_multimodal and f.media[0] == "image" and not f.packing_refusal]
AUDIO_FAMILIES = [f.name for f in FAMILIES.values() if f.is_multimodal and f.media[0] == "audio"]
REFUSED_FAMILIES = [f.name for f in FAMILIES.values() if f.packing_refusal]


def _audio_rows(seed: int) -> list[dict]:
    """Two clips of different lengths (so their feature masks differ) around a text-only sample."""
    gen = torch.Generator().manual_seed(seed)
    clip = lambda seconds: {"array": (0.1 * torch.randn(int(16000 * seconds), generator=gen)).numpy(),  # noqa: E731
                            "sampling_rate": 16000}
    return [
        {"messages": [{"role": "user", "content": "<audio>What is it?"}, {"role": "assistant", "content": "a dog"}],
         "audios": [clip(0.5)]},
        {"messages": [{"role": "user", "content": "Tell me a story"},
                      {"role": "assistant", "content": "the cat and the dog"}]},
        {"messages": [{"role": "user", "content": "<audio>Describe the sound."},
                      {"role": "assistant", "content": "a blue bird"}], "audios": [clip(1.2)]},
    ]


@pytest.mark.parametrize("mode", ["packing", "padding_free"])
@pytest.mark.parametrize("name", AUDIO_FAMILIES)
def test_audio_family_packed_with_audio_equals_one_by_one(name, mode, family_dirs):
    assert not FAMILIES[name].packing_refusal, "an audio family that packs must prove it here"
    _check_parity(family_dirs(name), _audio_rows(seed=3), mode)


@pytest.mark.parametrize("name", PACKED_FAMILIES)
def test_vision_family_packed_with_images_equals_one_by_one(name, family_dirs):
    fam = FAMILIES[name]
    _check_parity(family_dirs(name), _family_rows(seed=2), "packing", trust_remote_code=fam.trust_remote_code)


@pytest.mark.parametrize("mode", ["packing", "padding_free"])
@pytest.mark.parametrize("name", REFUSED_FAMILIES)
def test_family_that_cannot_pack_exactly_is_refused_up_front(name, mode, family_dirs):
    from tailorkit.errors import ConfigError
    from tailorkit.train.batching import check_batching

    fam = FAMILIES[name]
    cfg = build_config(SftConfig, {"model": str(family_dirs(name)), "dataset": ["unused.jsonl"], mode: True,
                                   "trust_remote_code": fam.trust_remote_code})
    with pytest.raises(ConfigError, match=f"--{mode} is not supported for the {name} family") as err:
        check_batching(cfg)
    assert fam.packing_refusal in str(err.value)
    check_batching(build_config(SftConfig, {"model": str(family_dirs(name)), "dataset": ["unused.jsonl"],
                                            "trust_remote_code": fam.trust_remote_code}))  # padded batches train


# Per-token NLL in nats, packed (one bf16 varlen kernel) vs one by one (stock bf16 sdpa): largest, and mean.
BF16_TOL, BF16_MEAN_TOL = 0.1, 0.02


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "autocast"])
@pytest.mark.parametrize("mode", ["packing", "padding_free"])
@pytest.mark.parametrize("kind", ["text", "qwen2_5_vl"])
def test_packed_bf16_on_gpu_runs_one_varlen_kernel_and_matches_one_by_one(tiny_text_dir, tiny_vl_dir, kind, mode,
                                                                           precision, monkeypatch):
    """On a GPU in bf16 (weights in bf16, or fp32 masters under bf16 autocast as training runs) a packed row is
    one fused varlen launch per layer (mRoPE positions included); its per-token losses match the samples run
    alone within BF16_TOL (BF16_MEAN_TOL on average), and the gradient norms within 2%."""
    from collections import Counter

    from tailorkit.train import attention

    model_dir, rows = (tiny_text_dir, _text_rows(6, seed=0)) if kind == "text" else (tiny_vl_dir, _vl_rows(seed=1))
    dtype = "bfloat16" if precision == "bf16" else "float32"
    cfg, bundle, samples = _setup(model_dir, rows, **{mode: True}, torch_dtype=dtype)
    if precision == "autocast":
        monkeypatch.setattr(bundle.model, "forward", torch.autocast("cuda", dtype=torch.bfloat16)(bundle.model.forward))
    model, pad_id = bundle.model.to("cuda"), bundle.tokenizer.pad_token_id
    items, collator, _ = train_batches(cfg, model, samples, pad_id)
    kernels = Counter()
    choose = attention.packed_kernel
    monkeypatch.setattr(attention, "packed_kernel", lambda q, d=0.0: kernels.update([choose(q, d)]) or choose(q, d))
    order = [s.enc for x in items for s in (x if isinstance(x, list) else [x])]
    total = sum(sum(1 for x in s.labels[1:] if x != -100) for s in order)
    ref_rows, ref_norm = [], 0.0
    for s in order:
        batch = _to(Collator(pad_id)([s]), "cuda")
        labels = batch.pop("labels")
        nll = shifted_token_nll(model(**batch).logits, labels)[0]
        (nll.sum() / total).backward()
        ref_rows.append(torch.cat([nll.detach(), torch.zeros(1, device="cuda")]))
    ref_norm = torch.norm(torch.stack([p.grad.float().norm() for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    ref = torch.cat(ref_rows)[:-1]
    nll, grads = _flat(model, _to(collator(items), "cuda"))
    norm = torch.norm(torch.stack([g.float().norm() for g in grads.values()]))
    assert kernels["torch_varlen"] == model.config.get_text_config().num_hidden_layers  # one launch per layer
    assert nll[0].shape == ref.shape
    assert (nll[0] - ref).abs().max().item() <= BF16_TOL
    assert (nll[0] - ref).abs().mean().item() <= BF16_MEAN_TOL
    assert abs(norm.item() - ref_norm.item()) <= 0.02 * ref_norm.item()
