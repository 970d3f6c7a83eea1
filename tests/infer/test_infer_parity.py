"""One encoder: greedy replies of `infer`, `deploy` and a direct `model.generate` agree, and the prompt tokens
are the training encoder's tokens up to the first supervised token."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest
import torch

from tailorkit.cli import main
from tailorkit.config import build_config
from tailorkit.config.infer import DeployConfig
from tailorkit.data.encode import IGNORE, encode, encode_prompt
from tailorkit.data.formats import parse_row
from tailorkit.serve.deploy import build_app, start_background

MAX_NEW = 12


@pytest.fixture(scope="module")
def row(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("parity-data")
    Image.new("RGB", (56, 84), (200, 30, 30)).save(folder / "shape.png")
    row = {"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                        {"role": "assistant", "content": "red"}], "images": ["shape.png"]}
    (folder / "data.jsonl").write_text(json.dumps(row) + "\n")
    return folder


def direct_generate(model_dir, adapter, folder):
    """The reference: plain transformers (+ peft) generate on the training encoder's prompt tokens."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter)
    row = json.loads((folder / "data.jsonl").read_text())
    conv = parse_row(row, base_dir=str(folder))
    full = encode(conv, processor)
    first = next(i for i, x in enumerate(full.labels) if x != IGNORE)
    prompt = encode_prompt(replace(conv, messages=conv.messages[:-1]), processor)
    assert prompt.input_ids == full.input_ids[:first]  # invariant 1
    inputs = {"input_ids": torch.tensor([prompt.input_ids]), **prompt.media,
              **{k: torch.tensor([v]) for k, v in prompt.token_fields.items()}}
    out = model.eval().generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW,
                                pad_token_id=processor.tokenizer.pad_token_id)
    return processor.tokenizer.decode(out[0, len(prompt.input_ids):], skip_special_tokens=True), len(prompt)


def via_infer(model_dir, adapter, folder, tmp_path):
    result = tmp_path / "result.jsonl"
    argv = ["infer", "--model", str(model_dir), "--val_dataset", str(folder / "data.jsonl"), "--result_path",
            str(result), "--max_new_tokens", str(MAX_NEW), "--torch_dtype", "float32"]
    assert main(argv + (["--adapters", str(adapter)] if adapter else [])) == 0
    (out,) = [json.loads(x) for x in result.read_text().splitlines()]
    assert out["reference"] == "red"
    return out["response"], out["prompt_tokens"]


def via_deploy(model_dir, adapter, lora, folder):
    """The server always has the adapter loaded: the base model's answers come with it switched off."""
    import openai

    cfg = build_config(DeployConfig, {"model": str(model_dir), "torch_dtype": "float32", "served_model_name": "base",
                                      "adapters": [f"lora={lora}"]})
    app, _ = build_app(cfg)
    uri = "data:image/png;base64," + base64.b64encode((folder / "shape.png").read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                             {"type": "text", "text": "What colour is the shape?"}]}]
    with start_background(app) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
        out = client.chat.completions.create(model="lora" if adapter else "base", messages=messages,
                                             max_tokens=MAX_NEW, temperature=0)
    return out.choices[0].message.content, out.usage.prompt_tokens


@pytest.mark.slow
@pytest.mark.parametrize("use_adapter", [False, True], ids=["base", "lora"])
def test_infer_deploy_and_generate_agree(tiny_vl_dir, tiny_vl_adapters, row, tmp_path, use_adapter):
    adapter = tiny_vl_adapters["alpha"] if use_adapter else None
    expected = direct_generate(tiny_vl_dir, adapter, row)
    assert expected[0].strip(), "the reference reply is empty; the comparison would prove little"
    assert via_infer(tiny_vl_dir, adapter, row, tmp_path) == expected
    assert via_deploy(tiny_vl_dir, adapter, tiny_vl_adapters["alpha"], row) == expected
