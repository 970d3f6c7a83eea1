"""sft and pt end to end on tiny models: loss falls, exactly the planned parameters change, reload = memory."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from tailorkit.cli import main, parse
from tailorkit.config import SftConfig, build_config
from tailorkit.data.collate import Collator
from tailorkit.data.dataset import load_conversations
from tailorkit.data.encode import encode
from tailorkit.demo.shapes import write_split
from tailorkit.errors import ConfigError, DataError
from tailorkit.train.sft import pt, sft

from helpers import ParamChangeRecorder, text_chat_rows, write_jsonl


def _config(model_dir, data, out, train_type, **over) -> SftConfig:
    values = {"model": str(model_dir), "dataset": [str(data)], "train_type": train_type, "torch_dtype": "float32",
              "max_steps": 30, "per_device_train_batch_size": 4, "logging_steps": 5, "save_steps": 15,
              "learning_rate": 1e-2 if train_type == "lora" else 3e-3, "lr_scheduler_type": "constant", "lora_rank": 8, "lora_alpha": 16,
              "lora_dropout": 0.0, "weight_decay": 0.0, "output_dir": str(out), "max_length": 256, **over}
    return build_config(SftConfig, values)


def _losses(result) -> list[float]:
    return [r["loss"] for r in result.log_history if "loss" in r]


def _reload(result, model_dir, multimodal: bool, lora: bool):
    auto = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    if not lora:
        return auto.from_pretrained(result.final_dir)
    from peft import PeftModel
    return PeftModel.from_pretrained(auto.from_pretrained(model_dir), result.final_dir)


@pytest.fixture(scope="module")
def vl_data(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("shapes"), "train", 24, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("multimodal", [False, True], ids=["text", "vl"])
@pytest.mark.parametrize("train_type", ["full", "lora"])
def test_sft_trains_the_planned_parameters_and_reloads(multimodal, train_type, tiny_text_dir, tiny_vl_dir,
                                                       vl_data, tmp_path):
    model_dir = tiny_vl_dir if multimodal else tiny_text_dir
    data = vl_data if multimodal else write_jsonl(tmp_path / "chat.jsonl", text_chat_rows(24))
    recorder = ParamChangeRecorder()
    result = sft(_config(model_dir, data, tmp_path / "out", train_type), callbacks=[recorder])

    losses = _losses(result)
    assert losses[-1] < 0.5 * losses[0], losses
    trainable = [n for n, t in recorder.trainable.items() if t]
    frozen = [n for n, t in recorder.trainable.items() if not t]
    assert trainable and all(recorder.changed[n] for n in trainable)
    assert not any(recorder.changed[n] for n in frozen)
    if multimodal:  # the vision tower is frozen by default
        assert any("visual" in n for n in frozen) and not any("visual" in n for n in trainable)
    if train_type == "lora":
        assert all("lora_" in n for n in trainable)

    # The saved checkpoint reloads with plain transformers/peft and gives the in-memory logits.
    processor = AutoProcessor.from_pretrained(result.final_dir)
    conv = load_conversations([str(data)])[0]
    batch = Collator(processor.tokenizer.pad_token_id if multimodal else processor.pad_token_id)(
        [encode(conv, processor)])
    batch.pop("labels")
    reloaded = _reload(result, model_dir, multimodal, train_type == "lora").eval()
    result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, result.model(**batch).logits, rtol=0, atol=1e-5)
    assert (result.final_dir / "chat_template.jinja").is_file()
    assert (tmp_path / "out" / "checkpoint-15" / "args.yaml").is_file()
    assert (tmp_path / "out" / "loss.png").stat().st_size > 0
    saved = yaml.safe_load((tmp_path / "out" / "args.yaml").read_text())
    assert build_config(SftConfig, saved) == result_config(tmp_path / "out" / "args.yaml")


def result_config(path):
    return parse("sft", [str(path)])


@pytest.mark.slow
def test_pt_supervises_every_token(tiny_text_dir, tmp_path):
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": "the quick brown fox jumps over the lazy dog"}] * 8)
    result = pt(_config(tiny_text_dir, data, tmp_path / "out", "full", max_steps=20))
    losses = _losses(result)
    assert losses[-1] < 0.5 * losses[0], losses


def test_broken_data_fails_before_the_model_loads(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}\n')
    cfg = _config(tmp_path / "no-such-model", data, tmp_path / "out", "lora")
    with pytest.raises(DataError, match=r"bad.jsonl:1: messages\[1\].content: the assistant reply is empty"):
        sft(cfg)


def test_refuses_to_train_over_an_earlier_run(tiny_text_dir, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", text_chat_rows(4))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "args.yaml").write_text("model: x\n")
    with pytest.raises(ConfigError, match="already holds a training run"):
        sft(_config(tiny_text_dir, data, tmp_path / "out", "lora"))


@pytest.mark.slow
def test_readme_command_shape_through_the_cli(tiny_vl_dir, vl_data, tmp_path):
    code = main(["sft", "--model", str(tiny_vl_dir), "--dataset", f"{vl_data}#8", "--train_type", "lora",
                 "--torch_dtype", "float32", "--num_train_epochs", "1", "--learning_rate", "1e-4",
                 "--gradient_accumulation_steps", "2", "--max_length", "512", "--output_dir", str(tmp_path / "out"),
                 "--gradient_checkpointing", "true", "--split_dataset_ratio", "0.25", "--save_steps", "2",
                 "--logging_steps", "1", "--system", "Answer with one word."])
    assert code == 0
    assert (tmp_path / "out" / "checkpoint-final" / "adapter_model.safetensors").is_file()
    rows = [json.loads(r) for r in (tmp_path / "out" / "logging.jsonl").read_text().splitlines()]
    assert "train_runtime" in rows[-1]
    assert any("eval_loss" in r for r in rows)  # 2 of the 8 rows were held out and evaluated
    saved = yaml.safe_load((tmp_path / "out" / "args.yaml").read_text())
    assert saved["system"] == "Answer with one word." and saved["gradient_checkpointing"] is True
