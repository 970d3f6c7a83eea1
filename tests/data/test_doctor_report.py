"""`tailorkit doctor` reads everything, changes nothing, lists every problem; `sft` fails before weights."""

from __future__ import annotations

import json
import shutil

import pytest

from tailorkit.cli import main, parse
from tailorkit.config.train import SftConfig
from tailorkit.data.encode import encode
from tailorkit.data.dataset import load_conversations
from tailorkit.errors import DataError
from tailorkit.models.load import load_processor


@pytest.fixture(scope="module")
def no_weights_vl(tiny_vl_dir, tmp_path_factory):
    """The tiny VL model directory without its weights file: doctor must never need it."""
    path = tmp_path_factory.mktemp("vl-no-weights")
    for f in tiny_vl_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, path / f.name)
    return path


def rows(image="imgs/a.png"):
    long_text = "The quick brown fox jumps over the lazy dog. " * 8
    return [
        {"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                      {"role": "assistant", "content": "red"}], "images": [image]},
        {"conversations": [{"from": "human", "value": "Hello!"}, {"from": "gpt", "value": "yes"}]},
        {"query": long_text, "response": "yes"},
    ]


def write(path, items):
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in items))
    return str(path)


def test_doctor_reports_layouts_lengths_errors_and_memory(no_weights_vl, tmp_path, write_png, capsys):
    write_png(tmp_path / "imgs" / "a.png")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not an image")
    data = write(tmp_path / "d.jsonl", rows() + [
        "{broken",
        {"messages": [{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "red"}],
         "images": ["imgs/bad.png"]},
        {"messages": [{"role": "user", "content": "<image><image>hi"}, {"role": "assistant", "content": "red"}],
         "images": ["imgs/a.png"]},
    ])
    proc = load_processor(str(no_weights_vl))
    good = load_conversations([write(tmp_path / "good.jsonl", rows())])
    lengths = [len(encode(c, proc)) for c in good]
    limit = sorted(lengths)[1] + 1  # only the long text row is over
    png = tmp_path / "hist.png"
    code = main(["doctor", "--model", str(no_weights_vl), "--dataset", data, "--max_length", str(limit),
                 "--truncation_strategy", "left", "--doctor_plot", str(png), "--output_dir", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert code == 2 and "doctor found 3 broken rows" in err
    assert "rows: 4 parsed, 3 encoded, 3 with errors; by layout: messages 2, query_response 1, sharegpt 1" in out
    assert "opened and decoded: 1 images" in out
    assert f"max {max(lengths)} at {data}:3" in out
    assert "1 rows exceed max_length; truncation_strategy left: 1 cut to max_length" in out
    assert f"{data}:4: invalid JSON" in out
    assert f"{data}:5: images: cannot decode image imgs/bad.png: not a recognised image format" in out
    assert f"{data}:6: images: 'images' has 1 entries but the messages contain 2 <image> placeholders" in out
    assert "<- max_length" in out and png.stat().st_size > 1000
    assert "estimated peak memory per device" in out and "optimizer states" in out


def test_doctor_on_clean_data_passes_and_predicts_truncation(no_weights_vl, tmp_path, write_png):
    from tailorkit.doctor import doctor

    write_png(tmp_path / "imgs" / "a.png")
    data = write(tmp_path / "d.jsonl", rows())
    proc = load_processor(str(no_weights_vl))
    lengths = sorted(len(encode(c, proc)) for c in load_conversations([data]))
    uncut = "deleted (a cut would hit media or the reply)"
    for strategy, expected in [("delete", {"deleted": 2}), ("right", {uncut: 2}),
                               ("left", {"cut to max_length": 2})]:  # the left cut stops before the image
        cfg = parse("doctor", ["--model", str(no_weights_vl), "--dataset", data, "--max_length",
                               str(lengths[0]), "--truncation_strategy", strategy, "--output_dir",
                               str(tmp_path / strategy)])
        report = doctor(cfg)
        assert report.ok and dict(report.data.outcome) == expected, strategy
        assert sorted(report.data.lengths) == lengths
        assert report.plot == tmp_path / strategy / "doctor" / "lengths.png" and report.plot.is_file()


def test_sft_fails_on_broken_data_before_reading_weights(no_weights_vl, tmp_path):
    from tailorkit.train.sft import sft

    data = write(tmp_path / "d.jsonl", rows("imgs/missing.png"))
    cfg = parse("sft", ["--model", str(no_weights_vl), "--dataset", data, "--output_dir", str(tmp_path / "o")])
    assert isinstance(cfg, SftConfig)
    with pytest.raises(DataError, match=r"d\.jsonl:1: images: image file .*missing\.png does not exist"):
        sft(cfg)  # the model directory has no weights: reaching them would fail differently
