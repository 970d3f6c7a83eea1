"""The tiny MiniCPM-V and Monkey remote-code look-alikes follow the published interfaces, so that what the tests
train is what users load: MiniCPM-V's nested processor outputs, marker-id tokenizer and forward(data); Monkey's
QWenTokenizer image span and a model that reads its images from the paths in the tokens."""

from __future__ import annotations

import inspect

import pytest
import torch
from PIL import Image

from tailorkit.config.train import ModelArgs
from tailorkit.data.collate import Collator
from tailorkit.data.encode import encode, render
from tailorkit.data.formats import parse_row
from tailorkit.models.load import load_bundle


def _bundle(family_dirs, name):
    return load_bundle(ModelArgs(model=str(family_dirs(name)), trust_remote_code=True, torch_dtype="float32"))


def _row(*images) -> dict:
    return {"messages": [{"role": "user", "content": "<image>" * len(images) + "What colour is the shape?"},
                         {"role": "assistant", "content": "red"}], "images": list(images)}


@pytest.fixture(scope="module")
def minicpmv(family_dirs):
    return _bundle(family_dirs, "minicpmv")


def test_minicpmv_processor_returns_the_published_nested_outputs(minicpmv):
    processor, tok = minicpmv.processor, minicpmv.tokenizer
    assert type(tok).__name__ == "MiniCPMVTokenizerFast" and tok.im_start_id == tok.convert_tokens_to_ids("<image>")
    wide = Image.new("RGB", (56, 28), "red")  # larger than the 28 px scale: the source image plus a 2 x 1 grid
    out = processor(text=["(<image>./</image>)What?"], images=[wide], return_tensors="pt")
    slices, bounds, sizes = out["pixel_values"][0], out["image_bound"][0], out["tgt_sizes"][0]
    assert isinstance(out["pixel_values"], list) and len(slices) == len(bounds) == len(sizes) == 3
    for pixels, (h, w) in zip(slices, sizes.tolist()):
        assert pixels.shape == (3, 14, h * w * 14)  # reshape_by_patch: patches side by side
    ids = out["input_ids"][0]
    for start, end in bounds.tolist():
        assert ids[start - 1] in (tok.im_start_id, tok.slice_start_id) and ids[end] in (tok.im_end_id,
                                                                                          tok.slice_end_id)
        assert (ids[start:end] == tok.unk_token_id).all()  # query_num <unk> per image or slice


def test_minicpmv_published_forward_data_equals_the_collated_batch(minicpmv, tmp_path):
    from tailorkit.train.attention import packed_attention_target

    model = minicpmv.model.eval()
    assert list(inspect.signature(type(model).forward).parameters)[1:2] == ["data"]
    Image.new("RGB", (56, 28), "blue").save(tmp_path / "a.png")
    rows = [_row(str(tmp_path / "a.png")), {"messages": [{"role": "user", "content": "Hi"},
                                                         {"role": "assistant", "content": "hello"}]}]
    samples = [encode(parse_row(r), minicpmv.processor) for r in rows]
    batch = Collator(minicpmv.tokenizer.pad_token_id)(samples)
    batch.pop("labels")
    with torch.no_grad():
        ours = model(**batch).logits
        text = render(minicpmv.processor, parse_row(rows[0]).messages, add_generation_prompt=False)
        direct = minicpmv.processor(text=[text], images=[Image.open(tmp_path / "a.png")], return_tensors="pt")
        n = direct["input_ids"].shape[1]
        data = {"input_ids": direct["input_ids"].long(), "pixel_values": direct["pixel_values"],
                "tgt_sizes": direct["tgt_sizes"], "image_bound": direct["image_bound"],
                "position_ids": torch.arange(n)[None]}
        published = model(data=data).logits  # the published call, as the model's own chat() makes it
    assert torch.allclose(ours[0, :n], published[0], atol=1e-5)
    assert packed_attention_target(model) is model.llm  # packing switches the inner transformers LM only


@pytest.fixture(scope="module")
def monkey(family_dirs):
    return _bundle(family_dirs, "monkey")


def test_monkey_tokenizer_carries_the_image_path_in_a_fixed_span(monkey):
    tok = monkey.tokenizer
    assert type(tok).__name__ == "QWenTokenizer" and tok.IMG_TOKEN_SPAN == 80
    ids = tok("<img>/x/a.png</img> Q", add_special_tokens=False)["input_ids"]
    span = ids[ids.index(tok.img_start_id) + 1: ids.index(tok.img_end_id)]
    assert len(span) == 80 and bytes(span[:8]).decode() == "/x/a.png" and set(span[8:]) == {tok.img_pad_id}
    assert tok.decode(ids) == "<img>/x/a.png</img> Q"  # decode gives the path back, not the padding


def test_monkey_model_reads_the_images_named_in_the_tokens(monkey):
    processor, model = monkey.processor, monkey.model.eval()
    red, green = Image.new("RGB", (40, 40), "red"), Image.new("RGB", (40, 40), "green")
    encoded = [encode(parse_row(_row(img)), processor) for img in (red, green, red)]
    assert encoded[0].media == {}  # no pixels in the batch: the path in the tokens is the image
    paths = [processor.tokenizer.decode(e.input_ids).split("<img>")[1].split("</img>")[0] for e in encoded]
    assert paths[0] == paths[2] != paths[1]  # one file per distinct image, named by its pixels
    batch = Collator(processor.tokenizer.pad_token_id)(encoded[:2])
    batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    assert not torch.allclose(logits[0], logits[1])  # same text, different image file: different outputs
