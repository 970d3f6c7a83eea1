"""A text model whose tokenizer_config.json names a processor class the folder does not ship (community
fine-tunes of vision models are like this) loads its tokenizer and trains; a multimodal model with the same
problem still fails, naming the folder."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import ParamChangeRecorder, text_chat_rows, write_jsonl
from tailorkit.config import SftConfig, build_config
from tailorkit.errors import ModelError
from tailorkit.models.load import load_processor


def _names_a_missing_processor(src, dst, processor_class: str):
    shutil.copytree(src, dst)
    path = dst / "tokenizer_config.json"
    data = json.loads(path.read_text())
    data["processor_class"] = processor_class
    path.write_text(json.dumps(data))
    return dst


@pytest.fixture(scope="module")
def quirky_text_dir(tiny_text_dir, tmp_path_factory):
    return _names_a_missing_processor(tiny_text_dir, tmp_path_factory.mktemp("quirky") / "model",
                                      "Qwen2_5_VLProcessor")


def test_the_stock_loader_fails_on_it(quirky_text_dir):
    from transformers import AutoProcessor

    with pytest.raises(OSError, match="Can't load image processor"):
        AutoProcessor.from_pretrained(quirky_text_dir)


@pytest.mark.slow
def test_quirky_text_model_uses_its_tokenizer_and_trains(quirky_text_dir, tmp_path, capsys):
    from tailorkit.train.sft import sft

    processor = load_processor(str(quirky_text_dir))
    assert "Tokenizer" in type(processor).__name__ and processor.chat_template
    assert "the config has no vision or audio part, so this text model uses its tokenizer" in capsys.readouterr().out
    data = write_jsonl(tmp_path / "chat.jsonl", text_chat_rows(4))
    recorder = ParamChangeRecorder()
    result = sft(build_config(SftConfig, {"model": str(quirky_text_dir), "dataset": [str(data)], "train_type": "lora",
                                          "max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1,
                                          "save_strategy": "no", "learning_rate": 1e-2,
                                          "output_dir": str(tmp_path / "out")}), callbacks=[recorder])
    assert [r["loss"] for r in result.log_history if "loss" in r]
    assert any(changed for n, changed in recorder.changed.items() if "lora_B" in n)


def test_a_multimodal_model_without_its_processor_still_fails(tiny_vl_dir, tmp_path):
    broken = _names_a_missing_processor(tiny_vl_dir, tmp_path / "vl", "Qwen2_5_VLProcessor")
    (broken / "processor_config.json").unlink()  # the image processor's settings are gone
    with pytest.raises(ModelError, match=f"cannot load a processor or tokenizer from {broken}"):
        load_processor(str(broken))
