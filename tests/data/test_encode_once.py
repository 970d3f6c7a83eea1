"""Encode once: for every registered family, the one-pass encoder (index from media headers, then one processor
run) gives exactly what the previous encoder gave (the processor run on the whole conversation and again on
every prefix, kept here as the reference), and lengths from header arithmetic equal the processor's output."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from helpers import write_wav
from PIL import Image
from test_video import write_mp4

from tailorkit.config.train import ModelArgs
from tailorkit.data.encode import (IGNORE, Encoded, encode, index, materialize, media_token_ids, one_text_value,
                                   render_conversation, run_processor)
from tailorkit.data.formats import count_media, parse_row
from tailorkit.data.media import at_rate, load_audio, load_image, load_video
from tailorkit.data.tools import renders_tools
from tailorkit.models.load import bundle_processor
from tailorkit.models.registry import FAMILIES


def _param(name):
    missing = [p for p in FAMILIES[name].requires if importlib.util.find_spec(p) is None]
    marks = [pytest.mark.skip(reason=f"{name} needs {missing}")] if missing else []
    return pytest.param(name, marks=marks, id=name)


FAMILY_PARAMS = [_param(n) for n in FAMILIES]


# ---- the reference: the encoder before "encode once" -----------------------------------------------------------

def reference_encode(conv, processor) -> Encoded:
    """The previous algorithm: the processor on the whole conversation with its media, and again on the prefix
    before and through each assistant turn (with the media of that prefix); the reply lies between."""
    media = _decoded(conv, processor)

    def run(text, messages=None):
        n = {k: len(v) if messages is None else count_media(messages, k) for k, v in media.items()}
        return run_processor(processor, text, media["image"][:n["image"]], media["video"][:n["video"]],
                             media["audio"][:n["audio"]])

    full = run(render_conversation(processor, conv, conv.messages, False))
    ids = full.pop("input_ids")[0].tolist()
    full.pop("attention_mask", None)
    labels = [IGNORE] * len(ids)
    tok = getattr(processor, "tokenizer", processor)

    def prefix_len(messages, generation_prompt):
        prefix = run(render_conversation(processor, conv, messages, generation_prompt), messages)
        n = prefix["input_ids"].shape[1]
        assert prefix["input_ids"][0].tolist() == ids[:n]
        return n

    for i, msg in enumerate(conv.messages):
        if msg["role"] == "assistant":
            start, end = prefix_len(conv.messages[:i], True), prefix_len(conv.messages[: i + 1], False)
            while end > start and not tok.decode([ids[end - 1]]).strip():
                end -= 1
            labels[start:end] = ids[start:end]
    labels = [IGNORE if t in media_token_ids(processor) else x for t, x in zip(ids, labels)]
    enc = Encoded(ids, labels)
    for key, value in full.items():
        value = one_text_value(value)  # remote-code processors' per-text lists (MiniCPM-V)
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == (1, len(ids)):
            enc.token_fields[key] = value[0].tolist()
        elif isinstance(value, torch.Tensor):
            enc.media[key] = value
    return enc


def _decoded(conv, processor) -> dict:
    video = getattr(processor, "video_processor", None)
    budget = {"fps": getattr(video, "fps", None), "max_frames": getattr(video, "max_frames", None)}
    extractor = getattr(processor, "feature_extractor", None) or getattr(processor, "audio_processor", None)
    rate = getattr(extractor, "sampling_rate", None)
    return {"image": [load_image(s, conv.base_dir) for s in conv.images],
            "video": [load_video(s, conv.base_dir, **budget) for s in conv.videos],
            "audio": [at_rate(*load_audio(s, conv.base_dir), rate) for s in conv.audios]}


# ---- rows of every kind a family takes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    Image.new("RGB", (56, 40), (200, 30, 30)).save(d / "a.png")
    Image.new("RGB", (90, 64), (30, 30, 200)).save(d / "b.png")
    Image.new("RGB", (28, 28), (30, 200, 30)).save(d / "tiny.png")
    Image.new("RGB", (200, 120), (90, 90, 90)).save(d / "wide.jpg")
    rotated = Image.new("RGB", (60, 30), (10, 120, 10))  # stored 60x30, shown 30x60 (EXIF orientation 6)
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(d / "rotated.jpg", exif=exif)
    write_wav(d / "a.wav", seconds=0.4)
    write_wav(d / "b.wav", seconds=0.7, rate=8000)
    write_mp4(d / "clip.mp4", frames=8, rate=4)
    return d


def _turns(first: str, second: str) -> list[dict]:
    return [{"role": "user", "content": first}, {"role": "assistant", "content": "red"},
            {"role": "user", "content": second}, {"role": "assistant", "content": "a blue square"}]


def _rows(processor, fam) -> list[dict]:
    """A text conversation, then two media of each kind the family takes (one in each user turn), then tools."""
    rows = [{"messages": _turns("What colour is the shape?", "And now?")}]
    files = {"image": ["a.png", "b.png"], "audio": ["a.wav", "b.wav"], "video": ["clip.mp4", "clip.mp4"]}
    kinds = list(fam.media) if fam.is_multimodal else []
    if fam.is_multimodal and getattr(processor, "video_processor", None) is not None and "video" not in kinds:
        kinds.append("video")
    for kind in kinds:
        rows.append({"messages": _turns(f"<{kind}>What colour is the shape?", f"And <{kind}>this one?"),
                     f"{kind}s": files[kind]})
    from tailorkit.data.encode import render
    if renders_tools(processor, render):
        rows.append({"messages": [{"role": "user", "content": "Weather in Paris?"},
                                  {"role": "assistant", "content": "",
                                   "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
                                  {"role": "tool", "content": "sunny"},
                                  {"role": "assistant", "content": "It is sunny."}],
                     "tools": [{"type": "function", "function": {"name": "weather", "description": "weather",
                                                                 "parameters": {"type": "object", "properties": {
                                                                     "city": {"type": "string"}}}}}]})
    return rows


def _processor(name, family_dirs):
    return bundle_processor(ModelArgs(model=str(family_dirs(name)), trust_remote_code=FAMILIES[name].trust_remote_code))


@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_one_pass_encoder_equals_the_prefix_encoder(name, family_dirs, media_dir):
    processor = _processor(name, family_dirs)
    media_ids = media_token_ids(processor)
    rows = _rows(processor, FAMILIES[name])
    for row in rows:
        conv = parse_row(row, source="rows.jsonl", line=1, base_dir=str(media_dir))
        want, got = reference_encode(conv, processor), encode(conv, processor)
        what = f"{name}: {list(row)}"
        assert got.input_ids == want.input_ids, what
        assert got.labels == want.labels, what
        assert any(x != IGNORE for x in got.labels), what
        assert sum(t in media_ids for t in got.input_ids) == sum(t in media_ids for t in want.input_ids), what
        assert got.token_fields == want.token_fields, what
        assert got.media.keys() == want.media.keys(), what
        for key in want.media:
            assert torch.equal(got.media[key], want.media[key]), f"{what}: {key}"
    assert len(rows) >= (2 if FAMILIES[name].is_multimodal else 1)


@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_lengths_from_headers_equal_the_processor(name, family_dirs, media_dir):
    """``index`` reads only media headers; its tokens (hence lengths) are the processor's on the decoded media,
    for sizes the processor resizes differently, EXIF-rotated photos, videos and audio at other rates."""
    fam = FAMILIES[name]
    if not fam.is_multimodal:
        pytest.skip("a text family has no media: its lengths are the tokenizer's (see the parity test)")
    processor = _processor(name, family_dirs)
    cases = []
    if "image" in fam.media:
        cases += [("image", f) for f in ("tiny.png", "a.png", "b.png", "wide.jpg", "rotated.jpg")]
    if "audio" in fam.media:
        cases += [("audio", f) for f in ("a.wav", "b.wav")]
    if getattr(processor, "video_processor", None) is not None:
        cases += [("video", "clip.mp4"), ("video", ["tiny.png", "tiny.png", "tiny.png", "tiny.png"])]
    for kind, src in cases:
        row = {"messages": [{"role": "user", "content": f"<{kind}>Describe it."},
                            {"role": "assistant", "content": "a shape"}], f"{kind}s": [src]}
        conv = parse_row(row, source="rows.jsonl", line=1, base_dir=str(media_dir))
        indexed = index(conv, processor)
        text = render_conversation(processor, conv, conv.messages, False)
        real = run_processor(processor, text, *(_decoded(conv, processor)[k] for k in ("image", "video", "audio")))
        want = real["input_ids"][0].tolist()
        if getattr(processor, "ids_from_media", False):  # Monkey: the span's ids are the image's path, its length is not
            assert len(indexed.input_ids) == len(want), f"{name} {kind} {src}"
            assert materialize(indexed, processor).input_ids == want, f"{name} {kind} {src}"
        else:
            assert indexed.input_ids == want, f"{name} {kind} {src}"
        assert len(materialize(indexed, processor)) == real["input_ids"].shape[1]
