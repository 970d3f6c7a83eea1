"""The one encoder: label masks token by token, prompt = training tokens up to the first reply."""

from __future__ import annotations

from PIL import Image
from transformers import AutoProcessor

from tailorkit.data.encode import IGNORE, encode, encode_prompt
from tailorkit.data.formats import parse_row


def _two_turn(tmp_path):
    Image.new("RGB", (56, 56), (200, 10, 10)).save(tmp_path / "red.png")
    row = {"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                        {"role": "assistant", "content": "red"},
                        {"role": "user", "content": "What shape is this?"},
                        {"role": "assistant", "content": "square"}],
           "images": ["red.png"]}
    return parse_row(row, source="rows.jsonl", line=1, base_dir=str(tmp_path))


def _assistant_spans(ids: list[int], tok) -> list[tuple[int, int]]:
    """Independent derivation: after '<|im_start|>assistant\\n' up to and including '<|im_end|>'."""
    start_id, end_id = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    header = tok("assistant\n", add_special_tokens=False)["input_ids"]
    spans = []
    for i, t in enumerate(ids):
        if t == start_id and ids[i + 1: i + 1 + len(header)] == header:
            begin = i + 1 + len(header)
            end = ids.index(end_id, begin) + 1
            spans.append((begin, end))
    return spans


def test_supervised_tokens_are_exactly_the_replies(tiny_vl_dir, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    tok = processor.tokenizer
    enc = encode(_two_turn(tmp_path), processor)
    spans = _assistant_spans(enc.input_ids, tok)
    assert len(spans) == 2
    expected = [IGNORE] * len(enc)
    for a, b in spans:
        expected[a:b] = enc.input_ids[a:b]
    assert enc.labels == expected  # token by token
    replies = [tok.decode(enc.input_ids[a:b]) for a, b in spans]
    assert replies == ["red<|im_end|>", "square<|im_end|>"]
    image_id = processor.image_token_id
    assert enc.input_ids.count(image_id) == 4  # 56x56 px -> 2x2 merged patches
    assert all(lab == IGNORE for t, lab in zip(enc.input_ids, enc.labels) if t == image_id)
    assert enc.media["image_grid_thw"].tolist() == [[1, 4, 4]]


def test_inference_prompt_equals_training_tokens_up_to_first_reply(tiny_vl_dir, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    conv = _two_turn(tmp_path)
    full = encode(conv, processor)
    first = next(i for i, lab in enumerate(full.labels) if lab != IGNORE)
    conv.messages = conv.messages[:1]
    prompt = encode_prompt(conv, processor)
    assert prompt.input_ids == full.input_ids[:first]
    assert prompt.media["pixel_values"].shape == full.media["pixel_values"].shape


def test_text_model_labels(tiny_text_dir):
    tok = AutoProcessor.from_pretrained(tiny_text_dir)
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say red"},
                        {"role": "assistant", "content": "red"}]}
    enc = encode(parse_row(row), tok)
    supervised = [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE]
    assert tok.decode(supervised) == "red<|im_end|>"
    assert tok.decode(enc.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")
