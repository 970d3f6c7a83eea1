"""Every row layout, file format and media form gives the same Encoded as the canonical messages form."""

from __future__ import annotations

import base64
import csv
import functools
import http.server
import json
import threading

import pytest
import torch

from tailorkit.data.dataset import load_conversations
from tailorkit.data.encode import IGNORE, encode
from tailorkit.models.load import load_processor

SYSTEM = "Answer with one word."
Q1, A1, Q2, A2 = "What colour is the shape?", "red", "What shape is this?", "circle"


def canonical(image: str) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"<image>{Q1}"},
                         {"role": "assistant", "content": A1}, {"role": "user", "content": Q2},
                         {"role": "assistant", "content": A2}], "images": [image]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def vl_processor(tiny_vl_dir):
    return load_processor(str(tiny_vl_dir))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, write_png):
    d = tmp_path_factory.mktemp("layouts")
    write_png(d / "imgs" / "a.png", 0)
    return d


@pytest.fixture(scope="module")
def served(data_dir):
    """An http server on 127.0.0.1 serving data_dir (for URL media)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(data_dir))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def reference(vl_processor, data_dir):
    [conv] = load_conversations([write_jsonl(data_dir / "canonical.jsonl", [canonical("imgs/a.png")])])
    return encode(conv, vl_processor)


def assert_same(enc, ref):
    assert enc.input_ids == ref.input_ids
    assert enc.labels == ref.labels
    assert enc.token_fields == ref.token_fields
    assert sorted(enc.media) == sorted(ref.media)
    for key in ref.media:
        assert torch.equal(enc.media[key], ref.media[key]), key


def _parts_row(data_dir, served, form: str) -> dict:
    img = data_dir / "imgs" / "a.png"
    src = {"relative": "imgs/a.png", "absolute": str(img), "url": f"{served}/imgs/a.png",
           "data_uri": "data:image/png;base64," + base64.b64encode(img.read_bytes()).decode()}[form]
    part = {"type": "image_url", "image_url": {"url": src}} if form in ("url", "data_uri") else \
        {"type": "image", "image": src}
    row = canonical(src)
    del row["images"]
    row["messages"][1]["content"] = [part, {"type": "text", "text": Q1}]
    return row


@pytest.mark.parametrize("form", ["relative", "absolute", "url", "data_uri"])
def test_media_forms_in_content_parts_match_canonical(form, vl_processor, data_dir, served, reference):
    path = write_jsonl(data_dir / f"parts_{form}.jsonl", [_parts_row(data_dir, served, form)])
    [conv] = load_conversations([path])
    assert conv.images and conv.layout == "messages"
    assert_same(encode(conv, vl_processor), reference)


def _layout_rows(data_dir) -> dict:
    img = "imgs/a.png"
    return {
        "sharegpt": {"system": SYSTEM, "images": [img], "conversations": [
            {"from": "human", "value": f"<image>{Q1}"}, {"from": "gpt", "value": A1},
            {"from": "human", "value": Q2}, {"from": "gpt", "value": A2}]},
        "query_response": {"system": SYSTEM, "images": [img], "history": [[f"<image>{Q1}", A1]], "query": Q2,
                           "response": A2},
        "messages_system_key": {**canonical(img), "system": SYSTEM,
                                "messages": canonical(img)["messages"][1:]},
    }


@pytest.mark.parametrize("layout", ["sharegpt", "query_response", "messages_system_key"])
def test_row_layouts_match_canonical(layout, vl_processor, data_dir, reference):
    path = write_jsonl(data_dir / f"{layout}.jsonl", [_layout_rows(data_dir)[layout]])
    [conv] = load_conversations([path])
    assert conv.layout == layout.replace("_system_key", "")
    assert_same(encode(conv, vl_processor), reference)


def test_alpaca_matches_canonical_single_turn(vl_processor, data_dir):
    ref_row = {"messages": [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": f"<image>{Q1}\n{Q2}"},
                            {"role": "assistant", "content": A1}], "images": ["imgs/a.png"]}
    alpaca = {"system": SYSTEM, "instruction": f"<image>{Q1}", "input": Q2, "output": A1, "images": ["imgs/a.png"]}
    [ref] = load_conversations([write_jsonl(data_dir / "alpaca_ref.jsonl", [ref_row])])
    [conv] = load_conversations([write_jsonl(data_dir / "alpaca.jsonl", [alpaca])])
    assert conv.layout == "alpaca"
    assert_same(encode(conv, vl_processor), encode(ref, vl_processor))


def _file_forms(data_dir, write_png):
    """The canonical row written as json, csv, parquet, a `datasets` folder and a load_dataset folder."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = canonical("imgs/a.png")
    (data_dir / "rows.json").write_text(json.dumps([row]))
    with (data_dir / "rows.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["messages", "images"])
        w.writeheader()
        w.writerow({"messages": json.dumps(row["messages"]), "images": json.dumps(row["images"])})
    pq.write_table(pa.Table.from_pylist([row]), data_dir / "rows.parquet")
    saved = datasets.Dataset.from_list([{**row, "images": [str(data_dir / "imgs" / "a.png")]}])
    saved = saved.cast_column("images", datasets.Sequence(datasets.Image()))
    saved.save_to_disk(str(data_dir / "saved"))
    folder = data_dir / "local_repo"
    write_png(folder / "imgs" / "a.png", 0)
    write_jsonl(folder / "train.jsonl", [row])
    return {"json": "rows.json", "csv": "rows.csv", "parquet": "rows.parquet", "save_to_disk": "saved",
            "load_dataset_folder": "local_repo"}


@pytest.mark.parametrize("streaming", [False, True])
def test_file_formats_match_canonical(streaming, vl_processor, data_dir, reference, write_png):
    from tailorkit.data.dataset import iter_conversations

    for name, rel in _file_forms(data_dir, write_png).items():
        spec = str(data_dir / rel)
        convs = list(iter_conversations(spec, streaming=True)) if streaming else load_conversations([spec])
        assert len(convs) == 1, name
        assert_same(encode(convs[0], vl_processor), reference)


def test_several_datasets_concatenate_and_sample_with_repetition(data_dir):
    a = write_jsonl(data_dir / "a.jsonl", [canonical("imgs/a.png")])
    rows = [{"query": f"{i}", "response": "yes"} for i in range(3)]
    b = write_jsonl(data_dir / "b.jsonl", rows)
    convs = load_conversations([a, f"{b}#7"])
    assert len(convs) == 8 and convs[0].layout == "messages"
    queries = [c.messages[0]["content"] for c in convs[1:]]
    assert sorted(queries) == sorted(["0", "1", "2"] * 2 + [queries[-1]])


def test_supervision_is_the_replies(vl_processor, reference):
    tok = vl_processor.tokenizer
    supervised = tok.decode([t for t in reference.labels if t != IGNORE])
    assert supervised == f"{A1}<|im_end|>{A2}<|im_end|>"


def test_video_as_frames_matches_between_list_and_content_part(vl_processor, data_dir, write_png):
    frames = [str(write_png(data_dir / "frames" / f"{i}.png", i).relative_to(data_dir)) for i in range(4)]
    listed = {"messages": [{"role": "user", "content": f"<video>{Q1}"}, {"role": "assistant", "content": A1}],
              "videos": [frames]}
    part = {"messages": [{"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": Q1}]},
                         {"role": "assistant", "content": A1}]}
    a, b = load_conversations([write_jsonl(data_dir / "video.jsonl", [listed, part])])
    enc = encode(a, vl_processor)
    assert_same(encode(b, vl_processor), enc)
    video_positions = [i for i, t in enumerate(enc.input_ids) if t == vl_processor.video_token_id]
    assert video_positions and all(enc.labels[i] == IGNORE for i in video_positions)
    assert "pixel_values_videos" in enc.media


def test_audio_rows_parse_and_wav_decodes(tmp_path, tiny_vl_dir):
    import wave

    import numpy as np

    from tailorkit.data.media import load_audio
    from tailorkit.errors import DataError

    samples = (np.sin(np.linspace(0, 20, 800)) * 16000).astype(np.int16)
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(samples.tobytes())
    decoded, rate = load_audio("a.wav", str(tmp_path))
    assert rate == 8000 and np.allclose(decoded, samples / 32768.0)
    row = {"messages": [{"role": "user", "content": "<audio>What is it?"}, {"role": "assistant", "content": "a dog"}],
           "audios": ["a.wav"]}
    [conv] = load_conversations([write_jsonl(tmp_path / "audio.jsonl", [row])])
    assert conv.audios == ["a.wav"] and conv.messages[0]["content"][0] == {"type": "audio"}
    with pytest.raises(DataError, match=r"audio\.jsonl:1: audios: the row has audios but this model's processor"):
        encode(conv, load_processor(str(tiny_vl_dir)))
