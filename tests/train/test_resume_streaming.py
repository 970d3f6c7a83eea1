"""Crash safety with --streaming: the checkpoint records the stream position; a resume reads past the trained rows
without encoding them and ends with bitwise-identical weights; other rows before that position are refused."""

from __future__ import annotations

import json
import signal

import pytest
from safetensors.torch import load_file
from test_resume import ADAPTER, pointed, run_child

import tailorkit.data.dataset as dataset_module
from tailorkit.cli import parse
from tailorkit.data.dataset import StreamingEncoded
from tailorkit.errors import ConfigError
from tailorkit.run_files import RESUME_FILE
from tailorkit.train.sft import sft

LONG = "a very long question " * 20  # over --max_length: deleted, yet a row the position counts


def write_rows(path, first: str = "what is"):
    rows = []
    for i in range(40):
        question = LONG if i % 7 == 3 else f"{first if i == 0 else 'what is'} {i} plus {i}?"
        rows.append({"messages": [{"role": "user", "content": question},
                                  {"role": "assistant", "content": f"{2 * i}"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stream_args(model, data, out, *extra):
    # 6 steps of batch 2 x accumulation 2 = 24 samples of the 34 kept; a checkpoint every 2 steps.
    return ["--model", str(model), "--dataset", str(data), "--output_dir", str(out), "--streaming", "true",
            "--max_steps", "6", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
            "--save_steps", "2", "--logging_steps", "1", "--torch_dtype", "float32", "--max_length", "64",
            "--truncation_strategy", "delete", "--lora_dropout", "0.1", "--seed", "7", *extra]


def count_encodes(monkeypatch) -> list[int]:
    """The dataset lines the streaming dataset encodes from now on, in order."""
    lines, original = [], dataset_module.encode_one

    def counted(item, *args, **kwargs):
        lines.append(item.line)
        return original(item, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "encode_one", counted)
    return lines


@pytest.mark.slow
def test_streamed_run_killed_mid_step_resumes_without_reencoding(tiny_text_dir, tmp_path, monkeypatch):
    data = write_rows(tmp_path / "data.jsonl")
    ref_lines = count_encodes(monkeypatch)
    expected = sft(parse("sft", stream_args(tiny_text_dir, data, tmp_path / "ref")))
    args = stream_args(tiny_text_dir, data, tmp_path / "run")

    r = run_child("kill_mid_step", 5, args)  # SIGKILL between the micro-batches of step 5
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    out = tmp_path / "run"
    assert pointed(out) == "checkpoint-4"
    position = json.loads((out / "checkpoint-4" / RESUME_FILE).read_text())["stream"]
    # 16 samples trained on by step 4: lines 1-19 of the file, of which lines 4, 11 and 18 were too long.
    assert (position["rows"], position["samples"]) == (19, 16)

    lines = count_encodes(monkeypatch)
    got = sft(parse("sft", [*args, "--resume_from_checkpoint", "last"]))
    assert lines and min(lines) == position["rows"] + 1, f"rows already trained on were encoded again: {lines}"
    assert lines == ref_lines[len(ref_lines) - len(lines):]  # the rest of the stream, as the uninterrupted run
    want, have = load_file(expected.final_dir / ADAPTER), load_file(got.final_dir / ADAPTER)
    assert have.keys() == want.keys()
    unequal = [k for k in want if not (have[k] == want[k]).all()]
    assert not unequal, f"resumed streamed weights differ from the uninterrupted run in {unequal}"
    assert got.summary.steps == 6 and got.summary.tokens_seen == expected.summary.tokens_seen

    write_rows(data, first="what was")  # a row before the recorded position changed: refused
    with pytest.raises(ConfigError, match="first 19 rows differ from those the checkpoint had trained on"):
        sft(parse("sft", [*stream_args(tiny_text_dir, data, tmp_path / "other"),
                          "--resume_from_checkpoint", str(out / "checkpoint-4")]))


def test_stream_position_maps_trained_samples_to_rows_read(tiny_text_dir, tmp_path):
    from tailorkit.models.load import load_processor

    data = write_rows(tmp_path / "data.jsonl")
    tok = load_processor(str(tiny_text_dir))
    stream = StreamingEncoded([str(data)], tok, max_length=64, truncation="delete")
    first = iter(stream)
    ids = [next(first).input_ids for _ in range(5)]  # 5 yielded (lines 1-3, 5, 6; line 4 is deleted) ...
    stream.consume(4)  # ... of which 4 trained on
    position = stream.position()
    assert (position.rows, position.samples) == (5, 4)

    resumed = StreamingEncoded([str(data)], tok, max_length=64, truncation="delete")
    resumed.resume_at(position)
    rest = list(resumed)
    assert rest[0].input_ids == ids[4] and len(rest) == 34 - 4
    assert resumed.report.skipped["longer than max_length"] == 5  # lines 11, 18, ... 39: line 4 is never encoded



def test_stream_packs_through_a_bounded_buffer(tiny_text_dir, tmp_path):
    from tailorkit.models.load import load_processor

    data = write_rows(tmp_path / "data.jsonl")
    tok = load_processor(str(tiny_text_dir))
    plain = [s.input_ids for s in StreamingEncoded([str(data)], tok, max_length=64, truncation="delete")]
    stream = StreamingEncoded([str(data)], tok, max_length=64, truncation="delete", packing_length=96, buffer=8)
    packs = list(stream)
    assert all(isinstance(p, list) and sum(len(s) for s in p) <= 96 for p in packs)
    assert any(len(p) > 1 for p in packs)
    # every sample once, and each pack from one buffer of 8 consecutive samples
    assert sorted(s.input_ids for p in packs for s in p) == sorted(plain)
    where = {tuple(ids): k for k, ids in enumerate(plain)}
    assert all(len({where[tuple(s.input_ids)] // 8 for s in p}) == 1 for p in packs)

    again = StreamingEncoded([str(data)], tok, max_length=64, truncation="delete", packing_length=96, buffer=8)
    first = iter(again)
    taken = 0
    while taken < 8:  # the packs of the first buffer: the position after it is known, none inside it
        pack = next(first)
        assert taken == 0 or again.position() is None
        again.consume(len(pack))
        taken += len(pack)
    position = again.position()
    assert (position.rows, position.samples) == (9, 8)  # line 4 was too long: 9 rows hold the first 8 samples


@pytest.mark.slow
@pytest.mark.parametrize("flag", ["--packing", "--padding_free"])
def test_streaming_trains_packed_and_padding_free(flag, tiny_text_dir, tmp_path, capsys):
    data = write_rows(tmp_path / "data.jsonl")
    result = sft(parse("sft", [*stream_args(tiny_text_dir, data, tmp_path / "out", flag, "true"), "--max_steps", "2"]))
    assert result.summary.steps == 2 and result.summary.tokens_seen > 0
    assert ("packing" if flag == "--packing" else "padding-free") + " batches with attention" in capsys.readouterr().out
