"""The SGLang adapter against a stand-in ``sglang`` module that records the calls (its public signatures)."""

from __future__ import annotations

import sys
import types
from importlib.machinery import ModuleSpec

import pytest

from helpers import hide_package, prompt_conversation
from tailorkit.config.train import ModelArgs
from tailorkit.config.infer import EngineArgs
from tailorkit.data.encode import encode_prompt, render
from tailorkit.errors import ConfigError
from tailorkit.infer.engine import GenerationSettings, Request
from tailorkit.infer.load import build_engine
from tailorkit.infer.sglang_engine import SglangEngine, sampling_params, sglang_inputs, to_completion


class FakeEngine:
    """sglang.Engine: keyword construction; generate returns one dict per prompt."""

    made: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []
        FakeEngine.made.append(self)

    def generate(self, prompt=None, sampling_params=None, input_ids=None, image_data=None, lora_path=None):
        self.calls.append(dict(prompt=prompt, sampling_params=sampling_params, input_ids=input_ids,
                               image_data=image_data, lora_path=lora_path))
        n = len(input_ids if input_ids is not None else prompt)
        return [{"text": f"reply{k}", "meta_info": {"prompt_tokens": 7, "completion_tokens": 2,
                                                    "finish_reason": {"type": "length" if k else "stop"}}}
                for k in range(n)]


@pytest.fixture
def fake_sglang(monkeypatch):
    FakeEngine.made = []
    module = types.ModuleType("sglang")
    module.Engine = FakeEngine
    module.__spec__ = ModuleSpec("sglang", None)  # find_spec answers from sys.modules
    monkeypatch.setitem(sys.modules, "sglang", module)
    return module


def test_missing_package_names_it(tiny_vl_dir, monkeypatch):
    hide_package(monkeypatch, "sglang")
    with pytest.raises(ConfigError, match="needs the sglang package .*pip install sglang"):
        build_engine(ModelArgs(model=str(tiny_vl_dir)), EngineArgs(infer_backend="sglang"))


def test_text_batches_are_token_ids_and_image_batches_rendered_text(tiny_vl_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    text, image = Request(conversation=prompt_conversation(False)), Request(conversation=prompt_conversation(True))
    assert sglang_inputs([text, Request(prompt="The quick")], processor) == {
        "input_ids": [encode_prompt(text.conversation, processor).input_ids,
                      processor.tokenizer("The quick")["input_ids"]]}
    mixed = sglang_inputs([text, image], processor)
    assert mixed["prompt"] == [render(processor, c.messages, add_generation_prompt=True)
                               for c in (text.conversation, image.conversation)]
    assert mixed["image_data"][0] is None and [im.size for im in mixed["image_data"][1]] == [(56, 56)]


def test_sampling_parameters_and_outputs():
    greedy = sampling_params(Request(prompt="x", settings=GenerationSettings(max_new_tokens=7, stop=("END",))))
    assert greedy == {"max_new_tokens": 7, "repetition_penalty": 1.0, "stop": ["END"], "skip_special_tokens": True,
                      "temperature": 0.0, "top_p": 1.0, "top_k": -1}
    sampled = sampling_params(Request(prompt="x", settings=GenerationSettings(temperature=0.7, top_p=0.9, seed=3)))
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"], sampled["sampling_seed"]) == (0.7, 0.9, -1, 3)
    done = to_completion({"text": "hi", "meta_info": {"prompt_tokens": 3, "completion_tokens": 2,
                                                       "finish_reason": {"type": "length", "length": 2}}})
    assert (done.text, done.prompt_tokens, done.completion_tokens, done.finish_reason) == ("hi", 3, 2, "length")


def test_load_and_generate_hand_sglang_our_settings(tiny_vl_dir, tiny_vl_adapters, fake_sglang):
    model = ModelArgs(model=str(tiny_vl_dir), torch_dtype="bfloat16")
    args = EngineArgs(infer_backend="sglang", adapters=[f"{n}={p}" for n, p in tiny_vl_adapters.items()],
                      max_batch_size=4, sglang_mem_fraction_static=0.5, sglang_context_length=512)
    engine, _ = build_engine(model, args)
    (llm,) = FakeEngine.made
    assert isinstance(engine, SglangEngine) and engine.adapter_names == ("alpha", "beta")
    assert llm.kwargs == dict(model_path=str(tiny_vl_dir), tokenizer_path=str(tiny_vl_dir), trust_remote_code=False,
                              dtype="bfloat16", max_running_requests=4, mem_fraction_static=0.5, context_length=512,
                              enable_lora=True, max_loras_per_batch=2, max_lora_rank=64,
                              lora_paths=[f"alpha={tiny_vl_adapters['alpha']}", f"beta={tiny_vl_adapters['beta']}"])
    assert engine.max_context == 512
    reqs = [Request(prompt_conversation(False), settings=GenerationSettings(max_new_tokens=3), adapters=("beta",)),
            Request(prompt_conversation(True), settings=GenerationSettings(max_new_tokens=5), adapters=("beta",))]
    streamed = []
    done = engine.generate_batch(reqs, on_text=lambda i, t: streamed.append((i, t)))
    (call,) = llm.calls
    assert call["prompt"] == sglang_inputs(reqs, engine.processor)["prompt"] and call["input_ids"] is None
    assert [p["max_new_tokens"] for p in call["sampling_params"]] == [3, 5] and call["lora_path"] == ["beta", "beta"]
    assert [(c.text, c.finish_reason) for c in done] == [("reply0", "stop"), ("reply1", "length")]
    assert streamed == [(0, "reply0"), (1, "reply1")]
    engine.generate_batch([Request(conversation=prompt_conversation(False))])
    assert llm.calls[-1]["lora_path"] is None and llm.calls[-1]["input_ids"] is not None
    with pytest.raises(ConfigError, match="one LoRA adapter per request"):
        engine.generate_batch([Request(conversation=prompt_conversation(False), adapters=("alpha", "beta"))])
    with pytest.raises(ConfigError, match="not loaded"):
        engine.lora_path(("gamma",))


def test_engine_serves_through_the_batching_queue(tiny_vl_dir, fake_sglang):
    """The deploy path drives any engine through generate_many; the stand-in's replies come back in order."""
    from tailorkit.infer.engine import generate_many

    engine, _ = build_engine(ModelArgs(model=str(tiny_vl_dir)), EngineArgs(infer_backend="sglang", max_batch_size=2))
    replies = generate_many(engine, [Request(conversation=prompt_conversation(False)) for _ in range(3)], batch_size=2)
    assert [c.text for c in replies] == ["reply0", "reply1", "reply0"]
    assert len(FakeEngine.made[0].calls) == 2
