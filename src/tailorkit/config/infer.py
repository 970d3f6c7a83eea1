"""Settings of `tailorkit infer` and `tailorkit deploy` (ms-swift argument names where they exist)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import ConfigError
from .args import ModelArgs, _f

BACKENDS = ("transformers", "vllm", "sglang", "lmdeploy")


@dataclass
class EngineArgs:
    infer_backend: str = _f("transformers", "inference engine: transformers, vllm, sglang or lmdeploy (the last "
                            "three need their package and a CUDA GPU)", choices=BACKENDS)
    adapters: list[str] = _f([], "LoRA checkpoints: 'path' or 'name=path'; infer applies all of them together, "
                             "deploy serves each under its name")
    ckpt_dir: str | None = _f(None, "a training run's checkpoint (or output) folder: its args.yaml gives the base "
                              "model, its processor and chat template are used")
    max_batch_size: int = _f(16, "most prompts generated together in one batch")
    vllm_gpu_memory_utilization: float = _f(0.9, "vllm: fraction of GPU memory vLLM may take")
    vllm_max_model_len: int | None = _f(None, "vllm: longest prompt + reply in tokens (default: the model's)")
    vllm_max_lora_rank: int = _f(64, "vllm, sglang: largest LoRA rank among --adapters")
    vllm_limit_mm_per_prompt: dict = _f({}, 'vllm: JSON of the most media items per prompt, e.g. {"image": 4}')
    sglang_mem_fraction_static: float | None = _f(None, "sglang: fraction of GPU memory for weights and KV cache "
                                                  "(default: SGLang's choice)")
    sglang_context_length: int | None = _f(None, "sglang: longest prompt + reply in tokens (default: the model's)")
    lmdeploy_session_len: int | None = _f(None, "lmdeploy: longest prompt + reply in tokens (default: the model's)")
    lmdeploy_cache_max_entry_count: float = _f(0.8, "lmdeploy: fraction of free GPU memory for the KV cache")

    def __post_init__(self):
        if isinstance(self.vllm_limit_mm_per_prompt, str):
            try:
                self.vllm_limit_mm_per_prompt = json.loads(self.vllm_limit_mm_per_prompt)
            except json.JSONDecodeError as e:
                raise ConfigError(f"vllm_limit_mm_per_prompt is not valid JSON: {e}") from None
        if self.infer_backend not in BACKENDS:
            raise ConfigError(f"infer_backend {self.infer_backend!r} is not one of {', '.join(BACKENDS)}")
        if self.sglang_mem_fraction_static is not None and not 0 < self.sglang_mem_fraction_static < 1:
            raise ConfigError(f"sglang_mem_fraction_static must be in (0, 1), got {self.sglang_mem_fraction_static}")
        if not 0 < self.lmdeploy_cache_max_entry_count < 1:
            raise ConfigError("lmdeploy_cache_max_entry_count must be in (0, 1), got "
                              f"{self.lmdeploy_cache_max_entry_count}")
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {self.max_batch_size}")


@dataclass
class GenerationArgs:
    max_new_tokens: int = _f(512, "longest reply in tokens", aliases=("max_tokens",))
    temperature: float = _f(0.0, "sampling temperature; 0 is greedy decoding")
    top_p: float = _f(1.0, "nucleus sampling: keep the smallest token set with this probability mass")
    top_k: int = _f(0, "sample among the k likeliest tokens (0: no limit)")
    repetition_penalty: float = _f(1.0, "penalty on tokens already present (1.0: none)")
    seed: int | None = _f(None, "random seed for sampling")
    stop: list[str] = _f([], "strings that end the reply (not included in it)", aliases=("stop_words",))

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise ConfigError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0 and repetition_penalty > 0")


@dataclass
class InferArgs:
    val_dataset: list[str] = _f([], "dataset mode: rows to answer (the last assistant message, if any, is the "
                                "reference); without it infer is an interactive chat")
    system: str | None = _f(None, "system prompt for conversations that have none (default: the run's)")
    result_path: str | None = _f(None, "dataset mode: jsonl to write (default: infer_result/<time>.jsonl, inside "
                                 "--ckpt_dir when given)")
    stream: bool = _f(True, "interactive mode: print the reply as it is generated")


@dataclass
class DeployArgs:
    host: str = _f("127.0.0.1", "address to bind; 0.0.0.0 exposes the server to the network")
    port: int = _f(8000, "port to listen on (0: any free port)")
    api_key: str | None = _f(None, "when set, every endpoint requires 'Authorization: Bearer <key>'")
    served_model_name: str | None = _f(None, "name of the base model in the API (default: the model folder name)")
    allow_remote_media: bool = _f(False, "let requests give http(s) image URLs that the server then fetches")
    media_root: str | None = _f(None, "folder from which requests may name server-local image files "
                                "(default: none allowed)")
    max_request_bytes: int = _f(20 * 1024 * 1024, "largest request body accepted (larger: 413)")
    max_tokens_limit: int = _f(2048, "largest max_tokens a request may ask for")
    max_remote_media_bytes: int = _f(20 * 1024 * 1024, "largest image fetched from a URL")
    batch_wait_ms: float = _f(5.0, "how long the batching queue waits for more requests before generating")

    def __post_init__(self):
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.max_request_bytes < 1024 or self.max_tokens_limit < 1:
            raise ConfigError("max_request_bytes must be >= 1024 and max_tokens_limit >= 1")


def _need_model(model: ModelArgs, engine: EngineArgs) -> None:
    if not model.model and not engine.ckpt_dir:
        raise ConfigError("--model or --ckpt_dir is required")


@dataclass
class InferConfig:
    """Everything `tailorkit infer` needs."""

    model: ModelArgs = field(default_factory=ModelArgs)
    engine: EngineArgs = field(default_factory=EngineArgs)
    generation: GenerationArgs = field(default_factory=GenerationArgs)
    infer: InferArgs = field(default_factory=InferArgs)

    def __post_init__(self):
        _need_model(self.model, self.engine)


@dataclass
class DeployConfig:
    """Everything `tailorkit deploy` needs; generation settings are the defaults of each request."""

    model: ModelArgs = field(default_factory=ModelArgs)
    engine: EngineArgs = field(default_factory=EngineArgs)
    generation: GenerationArgs = field(default_factory=GenerationArgs)
    deploy: DeployArgs = field(default_factory=DeployArgs)

    def __post_init__(self):
        _need_model(self.model, self.engine)
