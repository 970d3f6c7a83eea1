"""vLLM backend: the engine interface over vLLM's offline `LLM` (LoRA per request, images).

vllm itself is imported only when an engine is loaded or generates. The translation of our requests
to vLLM inputs and sampling parameters is plain data (`vllm_inputs`, `sampling_kwargs`) so that it is
tested without vLLM.
Prompts are built by the one encoder: text prompts are passed as token ids; prompts with images as
the rendered chat text plus the images, which vLLM expands with the same processor.
"""

from __future__ import annotations

from ..data.encode import Encoded, render_conversation
from .engine import Completion, OnText, Request, encode_request, request_images, single_adapter


def vllm_inputs(request: Request, processor) -> dict:
    """vLLM's prompt dict for one request."""
    conv = request.conversation
    if conv is None or not conv.images:
        return {"prompt_token_ids": encode_request(request, processor).input_ids}
    return {"prompt": render_conversation(processor, conv, conv.messages, True),
            "multi_modal_data": {"image": request_images(request)}}


def sampling_kwargs(request: Request) -> dict:
    """Keyword arguments of vllm.SamplingParams for one request (greedy when temperature is 0)."""
    s = request.settings
    kw = dict(max_tokens=s.max_new_tokens, repetition_penalty=s.repetition_penalty, seed=s.seed,
              stop=list(s.stop), skip_special_tokens=True)
    if s.temperature > 0:
        kw.update(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or -1)
    else:
        kw.update(temperature=0.0, top_p=1.0, top_k=-1)
    return kw


def to_completion(output) -> Completion:
    """Our Completion from a vllm.RequestOutput (first sample)."""
    sample = output.outputs[0]
    reason = "length" if sample.finish_reason == "length" else "stop"
    return Completion(sample.text, len(output.prompt_token_ids or ()), len(sample.token_ids), reason)


class VllmEngine:
    """Generation with vllm.LLM; each request uses at most one of the loaded LoRA adapters."""

    def __init__(self, llm, processor, adapters: dict[str, str], max_context: int | None = None):
        self.llm, self.processor = llm, processor
        self.adapter_names = tuple(adapters)
        self._adapter_paths = adapters
        self.max_context = max_context

    def encode(self, request: Request) -> Encoded:
        """Prompt tokens as the transformers engine builds them (for length checks and usage counts)."""
        return encode_request(request, self.processor)

    @classmethod
    def load(cls, spec, engine_args) -> VllmEngine:
        from vllm import LLM

        from ..models.load import load_family_processor

        m = spec.model
        kwargs = dict(model=m.model, tokenizer=spec.processor_dir, trust_remote_code=m.trust_remote_code,
                      dtype="auto" if m.torch_dtype == "auto" else m.torch_dtype,
                      gpu_memory_utilization=engine_args.vllm_gpu_memory_utilization,
                      max_num_seqs=engine_args.max_batch_size)
        if engine_args.vllm_max_model_len:
            kwargs["max_model_len"] = engine_args.vllm_max_model_len
        if engine_args.vllm_limit_mm_per_prompt:
            kwargs["limit_mm_per_prompt"] = engine_args.vllm_limit_mm_per_prompt
        if spec.adapters:
            kwargs.update(enable_lora=True, max_loras=len(spec.adapters), max_lora_rank=engine_args.vllm_max_lora_rank)
        llm = LLM(**kwargs)
        core = llm.llm_engine
        model_config = core.get_model_config() if hasattr(core, "get_model_config") else core.model_config
        max_context = getattr(model_config, "max_model_len", None)
        processor, _ = load_family_processor(spec.processor_dir, m)
        return cls(llm, processor, spec.adapters, max_context)

    def lora_request(self, names: tuple[str, ...]):
        name = single_adapter(names, self.adapter_names, "vllm")
        if name is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(name, self.adapter_names.index(name) + 1, self._adapter_paths[name])

    def generate_batch(self, requests: list[Request], on_text: OnText | None = None) -> list[Completion]:
        """Replies to requests sharing `batch_key()`; text reaches `on_text` once each reply is complete."""
        from vllm import SamplingParams

        inputs = [vllm_inputs(r, self.processor) for r in requests]
        params = [SamplingParams(**sampling_kwargs(r)) for r in requests]
        outputs = self.llm.generate(inputs, params, lora_request=self.lora_request(requests[0].adapters),
                                    use_tqdm=False)
        done = [to_completion(o) for o in outputs]
        if on_text is not None:
            for i, c in enumerate(done):
                on_text(i, c.text)
        return done
