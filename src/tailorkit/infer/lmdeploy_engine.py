"""LMDeploy backend: the engine interface over ``lmdeploy.pipeline`` (PyTorch engine, LoRA per batch, images).

lmdeploy itself is imported only when an engine is loaded. The translation of our requests is plain
data (`lmdeploy_prompt`, `generation_kwargs`), tested without LMDeploy. Text prompts are the one
encoder's rendered chat text, passed with ``do_preprocess=False`` so LMDeploy applies no template of
its own and tokenizes exactly that text. A prompt with images is passed as OpenAI-style messages
with the decoded images: LMDeploy's vision preprocessing inserts the image tokens itself, so those
prompts go through LMDeploy's chat template for the model.
"""

from __future__ import annotations

from ..data.encode import Encoded, as_content_parts, render_conversation
from .engine import (Completion, OnText, Request, context_length, encode_request, request_images,
                     single_adapter)


def has_images(request: Request) -> bool:
    return request.conversation is not None and bool(request.conversation.images)


def lmdeploy_prompt(request: Request, processor):
    """One prompt for ``pipeline.infer``: rendered chat text (or the raw prompt), or messages with images."""
    conv = request.conversation
    if conv is None:
        return request.prompt
    if not conv.images:
        return render_conversation(processor, conv, conv.messages, True)
    images = iter(request_images(request))
    messages = []
    for message in as_content_parts(conv.messages):
        parts = [{"type": "image_data", "image_data": {"data": next(images)}} if p.get("type") == "image" else p
                 for p in message["content"]]
        messages.append({"role": message["role"], "content": parts})
    return messages


def generation_kwargs(request: Request) -> dict:
    """Keyword arguments of lmdeploy.GenerationConfig for one request (greedy when temperature is 0)."""
    s = request.settings
    kw = dict(max_new_tokens=s.max_new_tokens, repetition_penalty=s.repetition_penalty,
              stop_words=list(s.stop) or None, skip_special_tokens=True)
    if s.temperature > 0:
        kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
        if s.seed is not None:
            kw["random_seed"] = s.seed
    else:
        kw.update(do_sample=False, top_k=1)
    return kw


def to_completion(response) -> Completion:
    """Our Completion from an lmdeploy Response."""
    reason = "length" if response.finish_reason == "length" else "stop"
    return Completion(response.text, int(response.input_token_len), int(response.generate_token_len), reason)


class LmdeployEngine:
    """Generation with an lmdeploy pipeline; each batch uses at most one of the loaded LoRA adapters."""

    def __init__(self, pipe, processor, adapters: dict[str, str], max_context: int | None = None):
        self.pipe, self.processor = pipe, processor
        self.adapter_names = tuple(adapters)
        self.max_context = max_context

    def encode(self, request: Request) -> Encoded:
        """Prompt tokens as the transformers engine builds them (for length checks and usage counts)."""
        return encode_request(request, self.processor)

    @classmethod
    def load(cls, spec, engine_args) -> LmdeployEngine:
        from lmdeploy import PytorchEngineConfig, pipeline
        from transformers import AutoConfig

        from ..models.load import load_family_processor

        m = spec.model
        config = dict(dtype="auto" if m.torch_dtype == "auto" else m.torch_dtype,
                      max_batch_size=engine_args.max_batch_size,
                      cache_max_entry_count=engine_args.lmdeploy_cache_max_entry_count)
        if engine_args.lmdeploy_session_len:
            config["session_len"] = engine_args.lmdeploy_session_len
        if spec.adapters:
            config["adapters"] = dict(spec.adapters)
        pipe = pipeline(m.model, backend_config=PytorchEngineConfig(**config), trust_remote_code=m.trust_remote_code)
        max_context = engine_args.lmdeploy_session_len or context_length(
            AutoConfig.from_pretrained(m.model, trust_remote_code=m.trust_remote_code))
        processor, _ = load_family_processor(spec.processor_dir, m)
        return cls(pipe, processor, spec.adapters, max_context)

    def adapter_name(self, names: tuple[str, ...]) -> str | None:
        return single_adapter(names, self.adapter_names, "lmdeploy")

    def generate_batch(self, requests: list[Request], on_text: OnText | None = None) -> list[Completion]:
        """Replies to requests sharing `batch_key()`; text prompts and prompts with images go in two calls
        (LMDeploy's ``do_preprocess`` is per call). Text reaches `on_text` once each reply is complete."""
        from lmdeploy import GenerationConfig

        adapter = self.adapter_name(requests[0].adapters)
        done: list[Completion | None] = [None] * len(requests)
        for with_images in (False, True):
            idx = [i for i, r in enumerate(requests) if has_images(r) == with_images]
            if not idx:
                continue
            responses = self.pipe.infer([lmdeploy_prompt(requests[i], self.processor) for i in idx],
                                        gen_config=[GenerationConfig(**generation_kwargs(requests[i])) for i in idx],
                                        do_preprocess=with_images, adapter_name=adapter)
            for i, response in zip(idx, responses):
                done[i] = to_completion(response)
        if on_text is not None:
            for i, c in enumerate(done):
                on_text(i, c.text)
        return done
