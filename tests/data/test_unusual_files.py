"""Files below the JSON level: each case is handled correctly or gives the same file:line error, never a
traceback or a silent change, and `doctor` and `sft` agree on every one of them."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from PIL import Image

from tailorkit.cli import parse
from tailorkit.data.media import load_image
from tailorkit.errors import DataError

ROW = {"messages": [{"role": "user", "content": "café?"}, {"role": "assistant", "content": "oui"}]}
LINE = json.dumps(ROW, ensure_ascii=False) + "\n"


def _image_row(name: str, key: str = "images") -> str:
    tag = "<image>" if key == "images" else "<video>"
    return json.dumps({"messages": [{"role": "user", "content": f"{tag}Colour?"},
                                    {"role": "assistant", "content": "red"}], key: [name]}) + "\n"


def _sixteen_bit_png(path):
    Image.fromarray((np.arange(28 * 28).reshape(28, 28) * 80).astype(np.uint16)).save(path)


def _rotated_jpeg(path):
    img = Image.new("RGB", (56, 28), "red")
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it 90 degrees clockwise
    img.save(path, exif=exif.tobytes())


def _animated_gif(path):
    frames = [Image.new("RGB", (28, 28), c) for c in ("red", "green", "blue")]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


# name -> (writer of data.jsonl and its media, expected error "line: field-or-problem" or None when handled)
CASES = {
    "latin1": (lambda d: (d / "data.jsonl").write_bytes(LINE.encode("latin-1")), ":1: the file is not UTF-8"),
    "gzip_named_jsonl": (lambda d: (d / "data.jsonl").write_bytes(gzip.compress(LINE.encode())), None),
    "utf8_bom": (lambda d: (d / "data.jsonl").write_bytes(b"\xef\xbb\xbf" + LINE.encode()), None),
    "duplicate_key": (lambda d: (d / "data.jsonl").write_text(
        LINE[:-2] + ', "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'),
        ":1: messages: the key 'messages' appears twice"),
    "png_16bit": (lambda d: (_sixteen_bit_png(d / "g.png"), (d / "data.jsonl").write_text(_image_row("g.png"))),
                  None),
    "exif_rotated_jpeg": (lambda d: (_rotated_jpeg(d / "r.jpg"), (d / "data.jsonl").write_text(_image_row("r.jpg"))),
                          None),
    "animated_gif_as_image": (lambda d: (_animated_gif(d / "a.gif"), (d / "data.jsonl").write_text(
        _image_row("a.gif"))), ":1: images: image a.gif is animated (3 frames)"),
    "animated_gif_as_video": (lambda d: (_animated_gif(d / "a.gif"), (d / "data.jsonl").write_text(
        _image_row("a.gif", "videos"))), None),
    "empty_file": (lambda d: (d / "data.jsonl").write_text(""), ":1: the file holds no rows"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_doctor_and_sft_agree(case, tmp_path, tiny_vl_dir, capsys):
    from tailorkit.doctor import doctor
    from tailorkit.train.sft import sft

    write, expected = CASES[case]
    write(tmp_path)
    data = str(tmp_path / "data.jsonl")
    common = ["--model", str(tiny_vl_dir), "--dataset", data, "--torch_dtype", "float32"]
    doctor_cfg = parse("doctor", [*common, "--output_dir", str(tmp_path / "doc")])
    sft_cfg = parse("sft", [*common, "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
                            "--save_strategy", "no", "--train_type", "full"])
    if expected is None:
        assert doctor(doctor_cfg).ok
        result = sft(sft_cfg)
        assert result.report.kept == 1 and result.log_history
        return
    with pytest.raises(DataError):
        doctor(doctor_cfg)
    report = capsys.readouterr().out
    with pytest.raises(DataError) as err:
        sft(sft_cfg)
    message = str(err.value)
    assert message.startswith(data + expected), message
    assert message in report, "doctor lists the same error as sft"


def test_images_are_decoded_as_a_viewer_shows_them(tmp_path):
    _sixteen_bit_png(tmp_path / "g.png")
    grey = np.asarray(load_image(str(tmp_path / "g.png")))[..., 0]
    expected = np.rint((np.arange(28 * 28).reshape(28, 28) * 80) * 255 / 65535)
    assert np.abs(grey.astype(int) - expected).max() <= 1  # scaled, not clipped to white
    assert grey.min() == 0 and 0 < grey.mean() < 255 * 0.9
    _rotated_jpeg(tmp_path / "r.jpg")
    assert load_image(str(tmp_path / "r.jpg")).size == (28, 56)  # upright: EXIF orientation applied
    _animated_gif(tmp_path / "a.gif")
    with pytest.raises(DataError, match=r"d\.jsonl:7: images: image .*a\.gif is animated \(3 frames\)"):
        load_image(str(tmp_path / "a.gif"), source="d.jsonl", line=7)
