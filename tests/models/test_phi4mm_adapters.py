"""Phi-4-multimodal's shipped vision-lora/ and speech-lora/: built like the checkpoint, found by dummy, routed
by modality (image rows move only the vision adapter, audio rows only the speech adapter, text rows neither)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import ParamChangeRecorder, write_jsonl, write_wav
from tailorkit.config.train import DataArgs, ModelArgs, SftConfig, TrainArgs, TunerArgs
from tailorkit.data.encode import IGNORE, encode
from tailorkit.data.formats import parse_row
from tailorkit.models.load import load_processor
from tailorkit.models.phi4mm import PHI4MM


@pytest.fixture(scope="module")
def phi4_dir(family_dirs):
    return family_dirs("phi4_multimodal")


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "shape.png"
    Image.new("RGB", (28, 28), "red").save(path)
    return path


def test_tiny_build_ships_both_adapters_like_the_checkpoint(phi4_dir):
    config = json.loads((phi4_dir / "config.json").read_text())
    for folder, key in (("vision-lora", "vision_lora"), ("speech-lora", "speech_lora")):
        adapter = json.loads((phi4_dir / folder / "adapter_config.json").read_text())
        assert adapter["peft_type"] == "LORA" and adapter["init_lora_weights"] is False
        assert config[key]["layer"] == adapter["target_modules"]
        assert (phi4_dir / folder / "adapter_model.safetensors").is_file()


def test_audio_row_labels_token_by_token(phi4_dir, tmp_path):
    processor = load_processor(str(phi4_dir), False, PHI4MM.chat_template)
    write_wav(tmp_path / "a.wav", seconds=0.5, rate=8000)  # resampled to the extractor's 16 kHz
    row = {"messages": [{"role": "user", "content": "<audio>What is it?"}, {"role": "assistant", "content": "a dog"},
                        {"role": "user", "content": "And now?"}, {"role": "assistant", "content": "a cat"}],
           "audios": ["a.wav"]}
    enc = encode(parse_row(row, base_dir=str(tmp_path)), processor)
    tok = processor.tokenizer
    audio = [i for i, t in enumerate(enc.input_ids) if t == processor.audio_token_id]
    assert len(audio) == int(enc.media["audio_embed_sizes"][0]) > 0
    assert all(enc.labels[i] == IGNORE for i in audio)
    supervised = [i for i, lab in enumerate(enc.labels) if lab != IGNORE]
    assert all(enc.labels[i] == enc.input_ids[i] for i in supervised)
    spans, start = [], None  # contiguous supervised runs = the two replies with their end-of-turn token
    for i in range(len(enc.labels) + 1):
        on = i < len(enc.labels) and enc.labels[i] != IGNORE
        if on and start is None:
            start = i
        elif not on and start is not None:
            spans.append(tok.decode(enc.input_ids[start:i]))
            start = None
    assert spans == ["a dog<|end|>", "a cat<|end|>"]


def _rows(kind: str, tmp_path, image_path) -> list[dict]:
    if kind == "image":
        return [{"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "red"}],
                 "images": [str(image_path)]}]
    if kind == "audio":
        write_wav(tmp_path / "tone.wav", seconds=0.5)
        return [{"messages": [{"role": "user", "content": "<audio>What is it?"},
                              {"role": "assistant", "content": "a tone"}], "audios": ["tone.wav"]}]
    return [{"messages": [{"role": "user", "content": "Say red"}, {"role": "assistant", "content": "red"}]}]


@pytest.mark.slow
@pytest.mark.parametrize("kind, moves", [("image", {"vision-lora"}), ("audio", {"speech-lora"}), ("text", set())])
def test_dummy_finds_both_adapters_and_routes_rows_by_modality(kind, moves, phi4_dir, tmp_path, image_path):
    from tailorkit.train.sft import sft

    data = write_jsonl(tmp_path / "train.jsonl", _rows(kind, tmp_path, image_path))
    recorder = ParamChangeRecorder()
    cfg = SftConfig(model=ModelArgs(model=str(phi4_dir), torch_dtype="float32"), data=DataArgs(dataset=[str(data)]),
                    tuner=TunerArgs(train_type="dummy"),  # no --adapters: the model directory's folders are found
                    train=TrainArgs(output_dir=str(tmp_path / "out"), max_steps=2, learning_rate=1e-2,
                                    save_strategy="no", logging_steps=1, weight_decay=0.0))
    result = sft(cfg, callbacks=[recorder])
    assert set(result.model.peft_config) == {"vision-lora", "speech-lora"}
    moved = {n for n, changed in recorder.changed.items() if changed}
    per_adapter = {a: {n for n in recorder.changed if f".{a}." in n} for a in ("vision-lora", "speech-lora")}
    assert all(per_adapter.values()), "both adapters' tensors are in the model"
    for adapter, names in per_adapter.items():
        if adapter in moves:
            assert names <= moved, f"{kind} rows left {sorted(names - moved)[:3]} unchanged"
        else:
            assert not names & moved, f"{kind} rows moved {adapter}: {sorted(names & moved)[:3]}"
    assert moved <= set().union(*per_adapter.values()), "only adapter tensors train with dummy"
    assert all(recorder.trainable[n] for names in per_adapter.values() for n in names)
    for folder in ("vision-lora", "speech-lora"):  # both saved, as the checkpoint ships them
        assert (result.final_dir / folder / "adapter_model.safetensors").is_file()
    assert torch.isfinite(torch.tensor([h["loss"] for h in result.log_history if "loss" in h])).all()
