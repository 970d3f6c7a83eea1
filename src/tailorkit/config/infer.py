"""Settings of `tailorkit infer` and `tailorkit deploy` (ms-swift argument names where they exist)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import ConfigError
from .fields import arg
from .train import ModelArgs

BACKENDS = ("transformers", "vllm", "sglang", "lmdeploy")
# Sampling bounds where generation stays finite (shared with the server's request schema)
SEED_MAX = 2**63 - 1  # torch.Generator seeds
MIN_TEMPERATURE = 0.01  # above 0 (greedy) but below this, logits / temperature can overflow
PENALTY_RANGE = (0.01, 10.0)  # repetition_penalty divides or multiplies scores


@dataclass
class EngineArgs:
    infer_backend: str = arg("transformers", "inference engine: transformers, vllm, sglang or lmdeploy (the last "
                             "three need their package and a CUDA GPU)", choices=BACKENDS)
    adapters: list[str] = arg([], "LoRA checkpoints: 'path' or 'name=path'; infer applies all of them together, "
                              "deploy serves each under its name")
    ckpt_dir: str | None = arg(None, "a training run's checkpoint (or output) folder: its args.yaml gives the base "
                              "model, its processor and chat template are used")
    max_batch_size: int = arg(16, "most prompts generated together in one batch")
    vllm_gpu_memory_utilization: float = arg(0.9, "vllm: fraction of GPU memory vLLM may take")
    vllm_max_model_len: int | None = arg(None, "vllm: longest prompt + reply in tokens (default: the model's)")
    vllm_max_lora_rank: int = arg(64, "vllm, sglang: largest LoRA rank among --adapters")
    vllm_limit_mm_per_prompt: dict = arg({}, 'vllm: JSON of the most media items per prompt, e.g. {"image": 4}')
    sglang_mem_fraction_static: float | None = arg(None, "sglang: fraction of GPU memory for weights and KV cache "
                                                   "(default: SGLang's choice)")
    sglang_context_length: int | None = arg(None, "sglang: longest prompt + reply in tokens (default: the model's)")
    lmdeploy_session_len: int | None = arg(None, "lmdeploy: longest prompt + reply in tokens (default: the model's)")
    lmdeploy_cache_max_entry_count: float = arg(0.8, "lmdeploy: fraction of free GPU memory for the KV cache")

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
    max_new_tokens: int = arg(512, "longest reply in tokens", aliases=("max_tokens",))
    temperature: float = arg(0.0, "sampling temperature; 0 is greedy decoding")
    top_p: float = arg(1.0, "nucleus sampling: keep the smallest token set with this probability mass")
    top_k: int = arg(0, "sample among the k likeliest tokens (0: no limit)")
    repetition_penalty: float = arg(1.0, "penalty on tokens already present (1.0: none)")
    seed: int | None = arg(None, "random seed for sampling")
    stop: list[str] = arg([], "strings that end the reply (not included in it)", aliases=("stop_words",))

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        low, high = PENALTY_RANGE
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature) or not 0 < self.top_p <= 1 or \
                self.top_k < 0 or not low <= self.repetition_penalty <= high:
            raise ConfigError(f"need temperature 0 (greedy) or >= {MIN_TEMPERATURE}, 0 < top_p <= 1, top_k >= 0 and "
                              f"{low} <= repetition_penalty <= {high}")
        if self.seed is not None and not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"seed must be in 0..2**63-1, got {self.seed}")


@dataclass
class InferArgs:
    val_dataset: list[str] = arg([], "dataset mode: rows to answer (the last assistant message, if any, is the "
                                "reference); without it infer is an interactive chat")
    system: str | None = arg(None, "system prompt for conversations that have none (default: the run's)")
    result_path: str | None = arg(None, "dataset mode: jsonl to write (default: infer_result/<time>.jsonl, inside "
                                 "--ckpt_dir when given)")
    stream: bool = arg(True, "interactive mode: print the reply as it is generated")


@dataclass
class DeployArgs:
    host: str = arg("127.0.0.1", "address to bind; 0.0.0.0 exposes the server to the network")
    port: int = arg(8000, "port to listen on (0: any free port)")
    api_key: str | None = arg(None, "when set, every endpoint requires 'Authorization: Bearer <key>'")
    served_model_name: str | None = arg(None, "name of the base model in the API (default: the model folder name)")
    allow_remote_media: bool = arg(False, "let requests give http(s) image URLs that the server then fetches")
    media_root: str | None = arg(None, "folder from which requests may name server-local image files "
                                "(default: none allowed)")
    max_request_bytes: int = arg(20 * 1024 * 1024, "largest request body accepted (larger: 413)")
    max_tokens_limit: int = arg(2048, "largest max_tokens a request may ask for")
    max_remote_media_bytes: int = arg(20 * 1024 * 1024, "largest image fetched from a URL or read from --media_root")
    max_image_pixels: int = arg(4096 * 4096, "largest image a request may send, in pixels (width x height), checked "
                                "before it is decoded (Pillow's own limit is 89M)")
    max_request_pixels: int = arg(2 * 4096 * 4096, "most image pixels of one request, all its images together")
    max_images_per_request: int = arg(16, "most images in one request")
    max_queue: int = arg(256, "most requests waiting for generation; more get 429 with Retry-After")
    max_concurrent_requests: int = arg(256, "most requests in progress (being read, waiting or generating); more "
                                       "get 429 with Retry-After")
    request_timeout_s: float = arg(600.0, "a request not answered this many seconds after it is queued for "
                                   "generation ends with 504 and stops (0: no limit)")
    enable_docs: bool = arg(False, "serve /openapi.json and /docs (behind --api_key when it is set), e.g. for API "
                            "fuzzers")
    batch_wait_ms: float = arg(5.0, "how long the batching queue waits for more requests before generating")

    def __post_init__(self):
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.max_request_bytes < 1024 or self.max_tokens_limit < 1:
            raise ConfigError("max_request_bytes must be >= 1024 and max_tokens_limit >= 1")
        counts = {"max_image_pixels": self.max_image_pixels, "max_request_pixels": self.max_request_pixels,
                  "max_images_per_request": self.max_images_per_request, "max_queue": self.max_queue,
                  "max_concurrent_requests": self.max_concurrent_requests}
        for name, value in counts.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.request_timeout_s < 0:
            raise ConfigError(f"request_timeout_s must be >= 0 (0: no limit), got {self.request_timeout_s}")


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
