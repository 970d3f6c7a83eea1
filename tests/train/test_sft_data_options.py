"""End to end: sft with --streaming, --truncation_strategy left and --max_pixels; the checkpoint carries the budget."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tailorkit.cli import parse
from tailorkit.data.dataset import load_conversations
from tailorkit.data.encode import encode_prompt
from tailorkit.errors import ConfigError
from tailorkit.models.load import load_processor


def _rows(tmp_path):
    Image.new("RGB", (224, 224), "red").save(tmp_path / "red.png")
    image_row = {"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                              {"role": "assistant", "content": "red"}], "images": ["red.png"]}
    long_row = {"query": "The quick brown fox jumps over the lazy dog. " * 10, "response": "yes"}
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [image_row, long_row] * 2) + "\n")
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("streaming", ["true", "false"])
def test_sft_with_pixel_budget_and_left_truncation(streaming, tiny_vl_dir, tmp_path, capsys):
    from tailorkit.train.sft import sft

    data = _rows(tmp_path)
    budget = 28 * 28 * 4
    cfg = parse("sft", ["--model", str(tiny_vl_dir), "--dataset", data, "--streaming", streaming, "--max_steps", "3",
                        "--max_length", "64", "--truncation_strategy", "left", "--max_pixels", str(budget),
                        "--torch_dtype", "float32", "--save_strategy", "no", "--logging_steps", "1",
                        "--output_dir", str(tmp_path / "out")])
    result = sft(cfg)
    assert [h["step"] for h in result.log_history if "loss" in h] == [1, 2, 3]
    assert result.report.truncated == 2 if streaming == "false" else result.report.truncated >= 1
    assert "truncated to max_length" in capsys.readouterr().out
    saved = json.loads((result.final_dir / "processor_config.json").read_text())
    assert saved["image_processor"]["size"]["longest_edge"] == budget
    [conv] = load_conversations([data + "#1"])
    conv.messages = conv.messages[:1]
    tokens = encode_prompt(conv, load_processor(str(result.final_dir))).input_ids
    assert tokens.count(load_processor(str(tiny_vl_dir)).image_token_id) == 4  # 224x224 is 64 without the budget


def test_streaming_needs_max_steps(tiny_vl_dir, tmp_path):
    with pytest.raises(ConfigError, match="--streaming true needs --max_steps"):
        parse("sft", ["--model", str(tiny_vl_dir), "--dataset", _rows(tmp_path), "--streaming", "true"])


def test_streaming_dataset_with_workers_yields_each_row_once(tiny_text_dir, tmp_path):
    import torch

    from tailorkit.data.dataset import StreamingEncoded, encode_all

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"query": f"{i} {i}", "response": "yes"}) + "\n" for i in range(7)))
    tok = load_processor(str(tiny_text_dir))
    eager, _ = encode_all(load_conversations([str(path)]), tok, max_length=512, truncation="raise")
    stream = StreamingEncoded([str(path)], tok, max_length=512, truncation="raise")
    loader = torch.utils.data.DataLoader(stream, batch_size=None, collate_fn=lambda x: x, num_workers=2)
    got = sorted(tuple(e.input_ids) for e in loader)
    assert got == sorted(tuple(e.input_ids) for e in eager) and len(set(got)) == 7
