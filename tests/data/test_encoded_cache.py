"""The encoded-data cache: a second run over the same data encodes nothing; a changed file, processor, template
or setting encodes anew; worker processes encode identically; packed batches built from the cache are those
built from encoded lists; resumes check the cache key."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import write_jsonl

import tailorkit.data.dataset as dataset_module
from tailorkit.config.train import ModelArgs
from tailorkit.data.build import EncodeRequest, default_cache_dir, encoded_sets
from tailorkit.data.dataset import encode_all, load_conversations
from tailorkit.models.load import bundle_processor
from tailorkit.train.kinds import KINDS


def rows(n: int, offset: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"what is {i} plus {i + offset}?"},
                          {"role": "assistant", "content": f"{2 * i + offset}"}]} for i in range(n)]


def image_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                          {"role": "assistant", "content": ["red", "blue"][i % 2]}],
             "images": [["a.png", "b.png"][i % 2]]} for i in range(n)]


@pytest.fixture
def count_encodes(monkeypatch):
    """How many conversations are indexed (tokenized) from now on, in this process."""
    calls = []
    original = dataset_module.index

    def counted(conv, *args, **kwargs):
        calls.append(conv.line)
        return original(conv, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "index", counted)
    return calls


def _request(data, cache, **over) -> EncodeRequest:
    settings = dict(kind="sft", specs=(str(data),), max_length=256, truncation="delete", cache_dir=str(cache))
    return EncodeRequest(**{**settings, **over})


def _sets(request, model_dir, **model):
    return encoded_sets(request, KINDS[request.kind].rows, bundle_processor(ModelArgs(model=str(model_dir), **model)))


def test_second_run_encodes_nothing_and_gets_the_same_samples(tiny_text_dir, tmp_path, count_encodes, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", rows(12))
    first, _, report = _sets(_request(data, tmp_path / "cache"), tiny_text_dir)
    assert len(count_encodes) == 12 and report.kept == 12
    assert "cached at" in capsys.readouterr().out

    second, _, again = _sets(_request(data, tmp_path / "cache"), tiny_text_dir)
    assert count_encodes[12:] == []  # nothing tokenized: the arrays are read from the cache
    assert "from the cache" in capsys.readouterr().out
    assert again.kept == 12 and second.fingerprint() == first.fingerprint()
    assert [first[i].input_ids for i in range(12)] == [second[i].input_ids for i in range(12)]
    assert isinstance(second.store.ids, np.memmap) and second.store.ids.dtype == np.int32
    # the eager encoder gives the same samples
    eager, _ = encode_all(load_conversations([str(data)]), second.processor, max_length=256, truncation="delete")
    assert [e.input_ids for e in eager] == [second[i].input_ids for i in range(12)]
    assert [e.labels for e in eager] == [second[i].labels for i in range(12)]


def test_changed_data_processor_template_or_setting_encodes_anew(tiny_text_dir, tmp_path, count_encodes):
    data = write_jsonl(tmp_path / "data.jsonl", rows(6))
    cache = tmp_path / "cache"
    base, _, _ = _sets(_request(data, cache), tiny_text_dir)
    assert len(count_encodes) == 6

    model = tmp_path / "model"  # the same model with one more line in its chat template
    shutil.copytree(tiny_text_dir, model)
    template = model / "chat_template.jinja"
    template.write_text(template.read_text() + "\n")
    other_template, _, _ = _sets(_request(data, cache), model)
    assert len(count_encodes) == 12 and other_template.key != base.key

    shorter, _, _ = _sets(_request(data, cache, max_length=200), tiny_text_dir)
    assert len(count_encodes) == 18 and shorter.key != base.key

    write_jsonl(data, rows(6, offset=1))
    changed, _, _ = _sets(_request(data, cache), tiny_text_dir)
    assert len(count_encodes) == 24 and changed.key != base.key

    again, _, _ = _sets(_request(data, cache, use_cache=False), tiny_text_dir)  # --load_from_cache_file false
    assert len(count_encodes) == 30 and again.key == changed.key


def test_pixel_budget_invalidates_an_image_dataset(tiny_vl_dir, tmp_path, count_encodes):
    from PIL import Image

    Image.new("RGB", (112, 112), "red").save(tmp_path / "a.png")
    Image.new("RGB", (56, 84), "blue").save(tmp_path / "b.png")
    data = write_jsonl(tmp_path / "data.jsonl", image_rows(4))
    default, _, _ = _sets(_request(data, tmp_path / "cache"), tiny_vl_dir)
    budget, _, _ = _sets(_request(data, tmp_path / "cache"), tiny_vl_dir, max_pixels=28 * 28 * 4)
    assert len(count_encodes) == 8 and budget.key != default.key
    assert budget.lengths.sum() < default.lengths.sum()  # fewer image tokens under the smaller budget
    assert budget[0].media["pixel_values"].shape[0] < default[0].media["pixel_values"].shape[0]


def test_two_worker_processes_encode_identically(tiny_vl_dir, tmp_path):
    from PIL import Image

    Image.new("RGB", (112, 112), "red").save(tmp_path / "a.png")
    Image.new("RGB", (56, 84), "blue").save(tmp_path / "b.png")
    data = write_jsonl(tmp_path / "data.jsonl", image_rows(300) + rows(300))  # more than one chunk per worker
    one, _, r1 = _sets(_request(data, tmp_path / "one", num_proc=1), tiny_vl_dir)
    two, _, r2 = _sets(_request(data, tmp_path / "two", num_proc=2), tiny_vl_dir)
    assert r1.kept == r2.kept == 600 and one.key == two.key
    for name in ("ids.bin", "labels.bin", "units.npy", "lengths.npy", "pending.bin"):
        assert (one.store.folder / name).read_bytes() == (two.store.folder / name).read_bytes(), name
    for i in (0, 1, 299, 300, 599):
        a, b = one[i], two[i]
        assert a.input_ids == b.input_ids and a.labels == b.labels and a.media.keys() == b.media.keys()
        assert all(torch.equal(a.media[k], b.media[k]) for k in a.media)


def test_packed_batches_from_the_cache_equal_those_from_lists(tiny_vl_dir, tmp_path):
    """The lazy path (packs of indices, mRoPE positions computed at collate time) builds the same batches as
    the list path that tests/test_packing_parity.py proves exact."""
    from PIL import Image

    from tailorkit.config.loading import build_config
    from tailorkit.config.train import SftConfig
    from tailorkit.models.load import load_bundle
    from tailorkit.train.batching import train_batches

    Image.new("RGB", (112, 112), "red").save(tmp_path / "a.png")
    Image.new("RGB", (56, 84), "blue").save(tmp_path / "b.png")
    data = write_jsonl(tmp_path / "data.jsonl", image_rows(5) + rows(5))
    cfg = build_config(SftConfig, {"model": str(tiny_vl_dir), "dataset": [str(data)], "packing": True,
                                   "max_length": 256, "torch_dtype": "float32"})
    lazy, _, _ = _sets(_request(data, tmp_path / "cache"), tiny_vl_dir)
    bundle = load_bundle(cfg.model, lazy.processor)
    eager = [lazy[i] for i in range(len(lazy))]
    pad = bundle.tokenizer.pad_token_id
    packs, collate, report = train_batches(cfg, bundle.model, lazy, pad)
    ref_packs, ref_collate, ref_report = train_batches(cfg, bundle.model, eager, pad)
    assert report.packs == ref_report.packs > 1 and len(packs) == len(ref_packs)
    for k in range(len(packs)):
        got, want = collate([packs[k]]), ref_collate([ref_packs[k]])
        assert got.keys() == want.keys()
        assert all(torch.equal(got[key], want[key]) for key in want), k


def test_default_cache_is_under_hf_home_not_the_data_folder(tiny_text_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = write_jsonl(data_dir / "data.jsonl", rows(3))
    before = sorted(p.name for p in data_dir.iterdir())
    train, _, _ = _sets(_request(data, tmp_path, cache_dir=None), tiny_text_dir)
    assert default_cache_dir() == tmp_path / "hf" / "tailorkit" / "encoded"
    assert train.store.folder.parent.parent == default_cache_dir()
    assert sorted(p.name for p in data_dir.iterdir()) == before  # nothing written next to the user's data


def test_a_dataset_without_a_digest_is_encoded_for_this_run_only(tiny_text_dir, tmp_path, monkeypatch, capsys):
    import tailorkit.data.build as build

    data = write_jsonl(tmp_path / "data.jsonl", rows(3))
    monkeypatch.setattr(build, "data_digest", lambda spec: None)  # as for a hub id
    train, _, report = _sets(_request(data, tmp_path / "cache"), tiny_text_dir)
    assert report.kept == 3 and len(train) == 3 and train[2].input_ids
    assert "not cached" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    again, _, _ = _sets(_request(data, tmp_path / "cache"), tiny_text_dir)
    assert again.fingerprint() == train.fingerprint()  # a resume compares the encoded arrays themselves


def test_packs_of_an_encoded_set_load_their_members_and_know_their_lengths(tiny_text_dir, tmp_path):
    from tailorkit.data.packing import PackedSet, pack_indices

    data = write_jsonl(tmp_path / "data.jsonl", rows(20))
    train, _, _ = _sets(_request(data, tmp_path / "cache"), tiny_text_dir)
    packs, report = pack_indices(train.lengths, 128)
    packed, single = PackedSet(train, packs), PackedSet(train)
    assert report.samples_out == 20 and len(packed) == report.packs < 20 and len(single) == 20
    for k in range(len(packed)):
        members = packed[k]
        assert [m.input_ids for m in members] == [train[i].input_ids for i in packs[k]]
        assert packed.lengths[k] == sum(len(m) for m in members) <= 128
    assert single.lengths.tolist() == train.lengths.tolist()
