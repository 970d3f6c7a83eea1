"""`tailorkit infer`: dataset mode, --ckpt_dir of a training run, interactive chat, backend selection."""

from __future__ import annotations

import importlib.util
import io
import json

import pytest
import yaml

from tailorkit.cli import main, parse
from tailorkit.config import build_config
from tailorkit.config.train import ModelArgs
from tailorkit.config.infer import EngineArgs, InferConfig
from tailorkit.errors import ConfigError
from tailorkit.infer.engine import GenerationSettings, Request
from tailorkit.infer.load import build_engine, resolve
from tailorkit.infer.run import chat_loop


def write_rows(folder, rows):
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("infer-rows")
    Image.new("RGB", (56, 56), (0, 0, 255)).save(folder / "blue.png")
    return write_rows(folder, [
        {"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                      {"role": "assistant", "content": "blue"}], "images": ["blue.png"]},
        {"messages": [{"role": "user", "content": "Hello! How are you?"}]},
        {"messages": [{"role": "system", "content": "Answer with one word."},
                      {"role": "user", "content": "What shape is this?"}, {"role": "assistant", "content": "star"},
                      {"role": "user", "content": "Tell me a story about a cat."}]},
    ])


def test_dataset_mode_writes_prompt_reference_and_response(tiny_vl_dir, rows_file, tmp_path):
    out = tmp_path / "out.jsonl"
    argv = ["infer", "--model", str(tiny_vl_dir), "--val_dataset", str(rows_file), "--result_path", str(out),
            "--max_new_tokens", "6", "--max_batch_size", "2", "--torch_dtype", "float32"]
    assert main(argv) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["reference"] for r in rows] == ["blue", None, None]
    assert rows[0]["images"] == ["blue.png"] and rows[0]["messages"][-1]["role"] == "user"
    assert rows[2]["messages"][0]["content"] == "Answer with one word." and len(rows[2]["messages"]) == 4
    assert all(isinstance(r["response"], str) and 1 <= r["completion_tokens"] <= 6 for r in rows)
    # each row answered alone gives the same reply as in the batch of two
    engine, _ = build_engine(ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32"), EngineArgs())
    from tailorkit.data.dataset import load_conversations
    from tailorkit.infer.run import split_reference
    for conv, row in zip(load_conversations([str(rows_file)], need_reply=False), rows):
        prompt, _ = split_reference(conv)
        alone = engine.generate_batch([Request(prompt, settings=GenerationSettings(max_new_tokens=6))])[0]
        assert alone.text == row["response"]


@pytest.fixture(scope="module")
def lora_run(tiny_vl_dir, tmp_path_factory):
    """A real `tailorkit sft` LoRA run of one step (writes args.yaml and checkpoint-final)."""
    from tailorkit.config import SftConfig
    from tailorkit.train.sft import sft

    folder = tmp_path_factory.mktemp("lora-run")
    data = write_rows(folder, [{"messages": [{"role": "user", "content": "Hello!"},
                                             {"role": "assistant", "content": "I am fine, thank you."}]}] * 2)
    cfg = build_config(SftConfig, {"model": str(tiny_vl_dir), "dataset": [str(data)], "train_type": "lora",
                                   "torch_dtype": "float32", "max_steps": 1, "learning_rate": 0.5,
                                   "save_strategy": "no", "output_dir": str(folder / "out"), "logging_steps": 1,
                                   "system": "You are a terse assistant."})
    return sft(cfg).output_dir


@pytest.mark.slow
def test_ckpt_dir_reads_the_run_config_processor_and_adapter(lora_run, tiny_vl_dir, tmp_path):
    spec = resolve(ModelArgs(), EngineArgs(ckpt_dir=str(lora_run)))
    final = lora_run / "checkpoint-final"
    assert spec.model.model == yaml.safe_load((lora_run / "args.yaml").read_text())["model"] == str(tiny_vl_dir)
    assert spec.model.torch_dtype == "float32"
    assert list(spec.adapters.values()) == [str(final)] and spec.processor_dir == str(final)
    assert spec.run_config["system"] == "You are a terse assistant."

    data = write_rows(tmp_path, [{"messages": [{"role": "user", "content": "Hello!"}]}])
    out = tmp_path / "r.jsonl"
    assert main(["infer", "--ckpt_dir", str(lora_run), "--val_dataset", str(data), "--result_path", str(out),
                 "--max_new_tokens", "8"]) == 0
    row = json.loads(out.read_text())
    assert row["messages"][0] == {"role": "system", "content": "You are a terse assistant."}

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tailorkit.data.formats import parse_row
    from tailorkit.infer.engine import TransformersEngine
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_vl_dir), final)
    ref = TransformersEngine(model, AutoProcessor.from_pretrained(final))
    conv = parse_row({"messages": row["messages"]}, need_reply=False)
    assert ref.generate_batch([Request(conv, settings=GenerationSettings(max_new_tokens=8),
                                       adapters=ref.adapter_names)])[0].text == row["response"]


def test_interactive_chat_keeps_history_streams_and_clears(tiny_vl_dir, rows_file):
    engine, _ = build_engine(ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32"), EngineArgs())
    seen = []
    generate = engine.generate_batch

    def recording(requests, on_text=None):
        seen.append(requests[0].conversation)
        return generate(requests, on_text)

    engine.generate_batch = recording
    answers = iter(["Hello!", "<image>What colour is the shape?", str(rows_file.parent / "blue.png"), "clear",
                    "What shape is this?", "<image>Hi", "no/such/file.png", "exit"])
    out = io.StringIO()
    history = chat_loop(engine, GenerationSettings(max_new_tokens=5), input_fn=lambda _: next(answers), output=out)
    assert [len(c.messages) for c in seen] == [1, 3, 1]  # the last one fails on its missing image, unsent
    assert len(seen[1].images) == 1 and seen[2].images == []
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == "What shape is this?"
    text = out.getvalue()
    assert "[history cleared]" in text and "[error]" in text and "no/such/file.png" in text
    assert history[1]["content"] in text


def test_backends_not_installed_or_not_available_say_what_to_do(tiny_vl_dir):
    cfg = parse("infer", ["--model", str(tiny_vl_dir), "--infer_backend", "sglang"])
    assert cfg.engine.infer_backend == "sglang"
    from tailorkit.infer.load import BACKENDS
    from tailorkit.config.infer import BACKENDS as CHOICES
    assert set(BACKENDS) == set(CHOICES)  # every backend the flag offers is registered
    for name in BACKENDS:  # every registered backend builds here, or says how to install it
        if importlib.util.find_spec(name) is None:
            with pytest.raises(ConfigError, match=f"pip install {name}"):
                build_engine(cfg.model, EngineArgs(infer_backend=name))
        elif name == "transformers":
            assert build_engine(cfg.model, EngineArgs(infer_backend=name))[0].adapter_names == ()
    with pytest.raises(ConfigError, match="--model or --ckpt_dir"):
        build_config(InferConfig, {})
    with pytest.raises(ConfigError, match="adapter_config.json"):
        build_engine(cfg.model, EngineArgs(adapters=[f"x={tiny_vl_dir}"]))


@pytest.mark.slow
def test_several_adapters_are_applied_together(tiny_vl_dir, tiny_vl_adapters):
    """infer --adapters a b == generating with a merged into the base and b on top."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tailorkit.data.formats import parse_row
    from tailorkit.infer.engine import TransformersEngine

    a, b = tiny_vl_adapters["alpha"], tiny_vl_adapters["beta"]
    engine, _ = build_engine(ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32"),
                             EngineArgs(adapters=[str(a), str(b)]))
    assert engine.adapter_names == ("alpha", "beta")
    conv = parse_row({"messages": [{"role": "user", "content": "Tell me a story about a dog."}]}, need_reply=False)
    settings = GenerationSettings(max_new_tokens=10)
    both = engine.generate([conv], settings)[0]
    merged = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_vl_dir), a).merge_and_unload()
    ref = TransformersEngine(PeftModel.from_pretrained(merged, b), AutoProcessor.from_pretrained(tiny_vl_dir))
    assert ref.generate([conv], settings)[0] == both
    alone = {n: engine.generate_batch([Request(conv, settings=settings, adapters=(n,))])[0].text.strip()
             for n in ("alpha", "beta")}
    assert both not in alone.values()


def test_ckpt_dir_of_a_full_fine_tune_is_the_model(tiny_vl_dir, tmp_path):
    import shutil

    ckpt = tmp_path / "out" / "checkpoint-final"
    shutil.copytree(tiny_vl_dir, ckpt)
    with pytest.raises(ConfigError, match="no args.yaml"):
        resolve(ModelArgs(), EngineArgs(ckpt_dir=str(ckpt)))
    (tmp_path / "out" / "args.yaml").write_text(yaml.safe_dump({"model": "/elsewhere/base", "torch_dtype": "bfloat16",
                                                                "model_type": "qwen2_5_vl"}))
    spec = resolve(ModelArgs(torch_dtype="float32"), EngineArgs(ckpt_dir=str(tmp_path / "out")))
    assert (spec.model.model, spec.processor_dir, spec.adapters) == (str(ckpt), str(ckpt), {})
    assert (spec.model.torch_dtype, spec.model.model_type) == ("float32", "qwen2_5_vl")  # the flag wins
