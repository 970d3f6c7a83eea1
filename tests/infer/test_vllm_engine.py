"""The vLLM adapter: request translation is tested here; generation needs vllm and a CUDA GPU."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from helpers import prompt_conversation
from tailorkit.data.encode import encode_prompt, render
from tailorkit.errors import ConfigError
from tailorkit.infer.engine import GenerationSettings, Request
from tailorkit.infer.vllm_engine import VllmEngine, sampling_kwargs, to_completion, vllm_inputs


@pytest.fixture(scope="module")
def processor(tiny_vl_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_vl_dir)


def test_text_prompts_are_the_encoders_token_ids(processor):
    c = prompt_conversation(False)
    assert vllm_inputs(Request(conversation=c), processor) == {
        "prompt_token_ids": encode_prompt(c, processor).input_ids}
    raw = vllm_inputs(Request(prompt="The quick brown fox"), processor)
    assert raw == {"prompt_token_ids": processor.tokenizer("The quick brown fox")["input_ids"]}


def test_image_prompts_are_the_rendered_template_plus_images(processor):
    c = prompt_conversation(True)
    out = vllm_inputs(Request(conversation=c), processor)
    assert out["prompt"] == render(processor, c.messages, add_generation_prompt=True)
    assert out["prompt"].count("<|image_pad|>") == 1 and len(out["multi_modal_data"]["image"]) == 1
    assert out["multi_modal_data"]["image"][0].size == (56, 56)


def test_sampling_parameters():
    greedy = sampling_kwargs(Request(prompt="x", settings=GenerationSettings(max_new_tokens=7, stop=("END",))))
    assert greedy == {"max_tokens": 7, "repetition_penalty": 1.0, "seed": None, "stop": ["END"],
                      "skip_special_tokens": True, "temperature": 0.0, "top_p": 1.0, "top_k": -1}
    sampled = sampling_kwargs(Request(prompt="x", settings=GenerationSettings(temperature=0.7, top_p=0.9, top_k=0,
                                                                              seed=3)))
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"], sampled["seed"]) == (0.7, 0.9, -1, 3)


def test_outputs_and_adapter_choice():
    out = SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[SimpleNamespace(text="hi", token_ids=[5, 6],
                                                                               finish_reason="length")])
    c = to_completion(out)
    assert (c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason) == ("hi", 3, 2, "length")
    engine = VllmEngine(llm=None, processor=None, adapters={"a": "/x/a", "b": "/x/b"})
    assert engine.lora_request(()) is None
    with pytest.raises(ConfigError, match="one LoRA adapter per request"):
        engine.lora_request(("a", "b"))
    with pytest.raises(ConfigError, match="not loaded"):
        engine.lora_request(("c",))


def test_generate_batch_hands_vllm_our_inputs_params_and_adapter(processor, monkeypatch):
    """The glue of generate_batch against stand-ins of vllm.SamplingParams / LoRARequest (their public signatures)."""
    import sys
    import types

    fake = types.ModuleType("vllm")
    fake.SamplingParams = lambda **kw: ("params", kw)
    lora_mod = types.ModuleType("vllm.lora.request")
    lora_mod.LoRARequest = lambda name, int_id, path: ("lora", name, int_id, path)
    for name, mod in (("vllm", fake), ("vllm.lora", types.ModuleType("vllm.lora")), ("vllm.lora.request", lora_mod)):
        monkeypatch.setitem(sys.modules, name, mod)
    calls = []

    class FakeLLM:
        def generate(self, inputs, params, lora_request=None, use_tqdm=True):
            calls.append((inputs, params, lora_request, use_tqdm))
            return [SimpleNamespace(prompt_token_ids=i.get("prompt_token_ids", [0]),
                                    outputs=[SimpleNamespace(text=f"reply{k}", token_ids=[1, 2], finish_reason="stop")])
                    for k, i in enumerate(inputs)]

    engine = VllmEngine(FakeLLM(), processor, {"a": "/x/a", "b": "/x/b"})
    reqs = [Request(prompt_conversation(False), settings=GenerationSettings(max_new_tokens=3), adapters=("b",)),
            Request(prompt_conversation(True), settings=GenerationSettings(max_new_tokens=5), adapters=("b",))]
    streamed = []
    done = engine.generate_batch(reqs, on_text=lambda i, d: streamed.append((i, d)))
    ((inputs, params, lora, use_tqdm),) = calls
    assert inputs[0] == vllm_inputs(reqs[0], processor)
    assert inputs[1]["prompt"] == vllm_inputs(reqs[1], processor)["prompt"]
    assert len(inputs[1]["multi_modal_data"]["image"]) == 1
    assert [p[1]["max_tokens"] for p in params] == [3, 5]
    assert lora == ("lora", "b", 2, "/x/b") and use_tqdm is False
    assert [c.text for c in done] == ["reply0", "reply1"] and streamed == [(0, "reply0"), (1, "reply1")]


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (pip install vllm)")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM generation needs a CUDA GPU")
def test_vllm_greedy_replies_match_transformers(tiny_vl_dir, tiny_vl_adapters):
    from tailorkit.config.train import ModelArgs
    from tailorkit.config.infer import EngineArgs
    from tailorkit.infer.load import build_engine

    model = ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32")
    adapters = [f"alpha={tiny_vl_adapters['alpha']}"]
    hf, _ = build_engine(model, EngineArgs(adapters=adapters))
    vl, _ = build_engine(model, EngineArgs(infer_backend="vllm", adapters=adapters,
                                           vllm_gpu_memory_utilization=0.3, vllm_max_model_len=512))
    settings = GenerationSettings(max_new_tokens=8)
    for names in ((), ("alpha",)):
        reqs = [Request(prompt_conversation(img), settings=settings, adapters=names) for img in (False, True)]
        assert [c.text for c in vl.generate_batch(reqs)] == [c.text for c in hf.generate_batch(reqs)]
