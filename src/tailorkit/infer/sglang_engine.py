"""SGLang backend: the engine interface over SGLang's offline ``sglang.Engine`` (LoRA per request, images).

sglang itself is imported only when an engine is loaded. The translation of our requests to SGLang's
``generate`` arguments and sampling parameters is plain data (`sglang_inputs`, `sampling_params`) so
that it is tested without SGLang. Prompts are built by the one encoder: a batch of text prompts is
passed as token ids; a batch with images as the rendered chat text plus the images, which SGLang
expands with the model's processor.
"""

from __future__ import annotations

from ..data.encode import Encoded, render_conversation
from .engine import (Completion, OnText, Request, context_length, encode_request, request_images,
                     single_adapter)


def sglang_inputs(requests: list[Request], processor) -> dict:
    """Keyword arguments of ``Engine.generate`` for a batch: ``input_ids``, or ``prompt`` + ``image_data``."""
    if not any(r.conversation is not None and r.conversation.images for r in requests):
        return {"input_ids": [encode_request(r, processor).input_ids for r in requests]}
    prompts = [render_conversation(processor, r.conversation, r.conversation.messages, True) if r.conversation
               is not None else r.prompt for r in requests]
    return {"prompt": prompts, "image_data": [request_images(r) or None for r in requests]}


def sampling_params(request: Request) -> dict:
    """SGLang's sampling-parameter dict for one request (greedy when temperature is 0)."""
    s = request.settings
    params = dict(max_new_tokens=s.max_new_tokens, repetition_penalty=s.repetition_penalty, stop=list(s.stop),
                  skip_special_tokens=True)
    if s.temperature > 0:
        params.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or -1)
        if s.seed is not None:
            params["sampling_seed"] = s.seed
    else:
        params.update(temperature=0.0, top_p=1.0, top_k=-1)
    return params


def to_completion(output: dict) -> Completion:
    """Our Completion from one of ``Engine.generate``'s result dicts."""
    meta = output["meta_info"]
    reason = meta.get("finish_reason") or {}
    kind = reason.get("type") if isinstance(reason, dict) else reason
    return Completion(output["text"], int(meta["prompt_tokens"]), int(meta["completion_tokens"]),
                      "length" if kind == "length" else "stop")


class SglangEngine:
    """Generation with sglang.Engine; each request uses at most one of the loaded LoRA adapters."""

    def __init__(self, llm, processor, adapters: dict[str, str], max_context: int | None = None):
        self.llm, self.processor = llm, processor
        self.adapter_names = tuple(adapters)
        self.max_context = max_context

    def encode(self, request: Request) -> Encoded:
        """Prompt tokens as the transformers engine builds them (for length checks and usage counts)."""
        return encode_request(request, self.processor)

    @classmethod
    def load(cls, spec, engine_args) -> SglangEngine:
        import sglang
        from transformers import AutoConfig

        from ..models.load import load_family_processor

        m = spec.model
        kwargs = dict(model_path=m.model, tokenizer_path=spec.processor_dir, trust_remote_code=m.trust_remote_code,
                      dtype="auto" if m.torch_dtype == "auto" else m.torch_dtype,
                      max_running_requests=engine_args.max_batch_size)
        if engine_args.sglang_mem_fraction_static is not None:
            kwargs["mem_fraction_static"] = engine_args.sglang_mem_fraction_static
        if engine_args.sglang_context_length:
            kwargs["context_length"] = engine_args.sglang_context_length
        if spec.adapters:
            kwargs.update(enable_lora=True, lora_paths=[f"{n}={p}" for n, p in spec.adapters.items()],
                          max_loras_per_batch=len(spec.adapters), max_lora_rank=engine_args.vllm_max_lora_rank)
        llm = sglang.Engine(**kwargs)
        max_context = engine_args.sglang_context_length or context_length(
            AutoConfig.from_pretrained(m.model, trust_remote_code=m.trust_remote_code))
        processor, _ = load_family_processor(spec.processor_dir, m)
        return cls(llm, processor, spec.adapters, max_context)

    def lora_path(self, names: tuple[str, ...]) -> str | None:
        """The adapter name SGLang knows the request's adapter by (None: the base model)."""
        return single_adapter(names, self.adapter_names, "sglang")

    def generate_batch(self, requests: list[Request], on_text: OnText | None = None) -> list[Completion]:
        """Replies to requests sharing `batch_key()`; text reaches `on_text` once each reply is complete."""
        lora = self.lora_path(requests[0].adapters)
        outputs = self.llm.generate(**sglang_inputs(requests, self.processor),
                                    sampling_params=[sampling_params(r) for r in requests],
                                    lora_path=[lora] * len(requests) if lora else None)
        done = [to_completion(o) for o in outputs]
        if on_text is not None:
            for i, c in enumerate(done):
                on_text(i, c.text)
        return done
