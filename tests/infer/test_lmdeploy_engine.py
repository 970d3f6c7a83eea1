"""The LMDeploy adapter against a stand-in ``lmdeploy`` module that records the calls (its public signatures)."""

from __future__ import annotations

import sys
import types
from importlib.machinery import ModuleSpec
from types import SimpleNamespace

import pytest

from helpers import hide_package, prompt_conversation
from tailorkit.config.train import ModelArgs
from tailorkit.config.infer import EngineArgs
from tailorkit.data.encode import render
from tailorkit.errors import ConfigError
from tailorkit.infer.engine import GenerationSettings, Request
from tailorkit.infer.lmdeploy_engine import LmdeployEngine, generation_kwargs, lmdeploy_prompt, to_completion
from tailorkit.infer.load import build_engine


class FakePipeline:
    """lmdeploy's Pipeline: infer(prompts, gen_config=[...], do_preprocess=..., adapter_name=...) -> [Response]."""

    def __init__(self, model_path, backend_config=None, trust_remote_code=False):
        self.model_path, self.backend_config, self.trust_remote_code = model_path, backend_config, trust_remote_code
        self.calls = []

    def infer(self, prompts, gen_config=None, do_preprocess=True, adapter_name=None):
        self.calls.append(dict(prompts=prompts, gen_config=gen_config, do_preprocess=do_preprocess,
                               adapter_name=adapter_name))
        tag = "img" if do_preprocess else "txt"
        return [SimpleNamespace(text=f"{tag}{k}", input_token_len=9, generate_token_len=2, finish_reason="stop")
                for k in range(len(prompts))]


@pytest.fixture
def fake_lmdeploy(monkeypatch):
    module = types.ModuleType("lmdeploy")
    module.__spec__ = ModuleSpec("lmdeploy", None)  # find_spec answers from sys.modules
    module.made = []

    def pipeline(model_path, **kwargs):
        module.made.append(FakePipeline(model_path, **kwargs))
        return module.made[-1]

    module.pipeline = pipeline
    module.PytorchEngineConfig = lambda **kw: ("PytorchEngineConfig", kw)
    module.GenerationConfig = lambda **kw: ("GenerationConfig", kw)
    monkeypatch.setitem(sys.modules, "lmdeploy", module)
    return module


def test_missing_package_names_it(tiny_vl_dir, monkeypatch):
    hide_package(monkeypatch, "lmdeploy")
    with pytest.raises(ConfigError, match="needs the lmdeploy package .*pip install lmdeploy"):
        build_engine(ModelArgs(model=str(tiny_vl_dir)), EngineArgs(infer_backend="lmdeploy"))


def test_prompts_text_is_the_encoders_rendering_images_are_messages(tiny_vl_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    text = prompt_conversation(False)
    assert lmdeploy_prompt(Request(conversation=text), processor) == render(processor, text.messages, True)
    assert lmdeploy_prompt(Request(prompt="The quick"), processor) == "The quick"
    (message,) = lmdeploy_prompt(Request(conversation=prompt_conversation(True)), processor)
    image, words = message["content"]
    assert message["role"] == "user" and words == {"type": "text", "text": "What colour is the shape?"}
    assert image["type"] == "image_data" and image["image_data"]["data"].size == (56, 56)


def test_generation_config_and_responses():
    greedy = generation_kwargs(Request(prompt="x", settings=GenerationSettings(max_new_tokens=7, stop=("END",))))
    assert greedy == {"max_new_tokens": 7, "repetition_penalty": 1.0, "stop_words": ["END"],
                      "skip_special_tokens": True, "do_sample": False, "top_k": 1}
    sampled = generation_kwargs(Request(prompt="x", settings=GenerationSettings(temperature=0.7, top_p=0.9, top_k=5,
                                                                                seed=3)))
    assert {k: sampled[k] for k in ("do_sample", "temperature", "top_p", "top_k", "random_seed")} == {
        "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "random_seed": 3}
    done = to_completion(SimpleNamespace(text="hi", input_token_len=3, generate_token_len=2, finish_reason="length"))
    assert (done.text, done.prompt_tokens, done.completion_tokens, done.finish_reason) == ("hi", 3, 2, "length")


def test_load_and_generate_hand_lmdeploy_our_settings(tiny_vl_dir, tiny_vl_adapters, fake_lmdeploy):
    model = ModelArgs(model=str(tiny_vl_dir), torch_dtype="bfloat16")
    args = EngineArgs(infer_backend="lmdeploy", adapters=[f"{n}={p}" for n, p in tiny_vl_adapters.items()],
                      max_batch_size=4, lmdeploy_session_len=1024, lmdeploy_cache_max_entry_count=0.5)
    engine, _ = build_engine(model, args)
    (pipe,) = fake_lmdeploy.made
    assert isinstance(engine, LmdeployEngine) and engine.adapter_names == ("alpha", "beta")
    assert pipe.model_path == str(tiny_vl_dir) and pipe.trust_remote_code is False
    adapters = {n: str(p) for n, p in tiny_vl_adapters.items()}
    assert pipe.backend_config == ("PytorchEngineConfig", dict(dtype="bfloat16", max_batch_size=4,
                                                               cache_max_entry_count=0.5, session_len=1024,
                                                               adapters=adapters))
    assert engine.max_context == 1024
    reqs = [Request(prompt_conversation(True), settings=GenerationSettings(max_new_tokens=5), adapters=("beta",)),
            Request(prompt_conversation(False), settings=GenerationSettings(max_new_tokens=3), adapters=("beta",))]
    streamed = []
    done = engine.generate_batch(reqs, on_text=lambda i, t: streamed.append((i, t)))
    text_call, image_call = pipe.calls  # do_preprocess is per call: text prompts first, then those with images
    assert text_call["prompts"] == [lmdeploy_prompt(reqs[1], engine.processor)] and not text_call["do_preprocess"]
    assert image_call["do_preprocess"] and image_call["prompts"][0][0]["content"][0]["type"] == "image_data"
    assert [g[1]["max_new_tokens"] for g in text_call["gen_config"] + image_call["gen_config"]] == [3, 5]
    assert text_call["adapter_name"] == image_call["adapter_name"] == "beta"
    assert [c.text for c in done] == ["img0", "txt0"] and streamed == [(0, "img0"), (1, "txt0")]
    with pytest.raises(ConfigError, match="one LoRA adapter per request"):
        engine.generate_batch([Request(conversation=prompt_conversation(False), adapters=("alpha", "beta"))])
