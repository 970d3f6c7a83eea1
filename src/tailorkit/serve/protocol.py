"""OpenAI request bodies (typed, so wrong types are 422) and their translation to engine Requests.

Every field is bounded where it is parsed: numbers to ranges where generation stays finite, strings to
valid Unicode, lists to counts (messages, parts, prompts), so no input reaches the engine that could fail
there with a 5xx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from ..config.infer import MIN_TEMPERATURE, PENALTY_RANGE, SEED_MAX
from ..data.formats import parse_row
from ..errors import TailorkitError
from ..infer.engine import Engine, GenerationSettings, Request
from .errors import ApiError
from .media import MediaPolicy, load_request_images
from .tools import check_tool_request
MAX_CHOICES = 64  # completions one request may ask for (prompts x n)
MAX_MESSAGES = 1024  # messages per chat request
MAX_PARTS = 256  # content parts per message


def valid_unicode(value: str) -> str:
    """``value`` if it can be encoded as UTF-8 (JSON escapes can produce lone surrogates, which cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"is not valid Unicode: a lone surrogate at character {e.start}") from None
    return value


def at_most(n: int):
    """A before-validator refusing a list of more than ``n`` items before any item is validated (pydantic's
    max_length counts after validating them all)."""
    def check(value):
        if isinstance(value, list) and len(value) > n:
            raise ValueError(f"has {len(value)} items; at most {n} are accepted")
        return value
    return BeforeValidator(check)


Text = Annotated[str, AfterValidator(valid_unicode)]


class ImageUrl(BaseModel):
    url: Text
    detail: Text | None = None


class ContentPart(BaseModel):
    type: Literal["text", "image_url"]
    text: Text | None = None
    image_url: ImageUrl | None = None


class ToolCallFunction(BaseModel):
    name: str
    arguments: str | dict = "{}"


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: Text | Annotated[list[ContentPart], at_most(MAX_PARTS)] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool result: the call it answers
    name: Text | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


# OpenAI features this server does not implement: asking for them is a 400, not a silently different answer.
UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "best_of", "suffix", "logit_bias", "presence_penalty",
               "frequency_penalty", "functions", "function_call", "response_format", "audio", "modalities",
               "prediction")


class _Sampling(BaseModel):
    """Fields shared by chat and text completions; other fields (user, metadata ...) are accepted and unused,
    except the UNSUPPORTED features, which are refused when set."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: Text
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=2**31 - 1)
    repetition_penalty: float | None = Field(None, ge=PENALTY_RANGE[0], le=PENALTY_RANGE[1])
    n: int = Field(1, ge=1, le=16)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("temperature")
    @classmethod
    def _finite_temperature(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return value


class ChatRequest(_Sampling):
    messages: Annotated[list[ChatMessage], at_most(MAX_MESSAGES)] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict] | None = None  # rendered by the model's chat template (or --agent_template)
    tool_choice: str | dict | None = None


class CompletionRequest(_Sampling):
    prompt: Text | Annotated[list[Text], at_most(MAX_CHOICES)]


@dataclass(frozen=True)
class Limits:
    default: GenerationSettings  # the server's --max_new_tokens, --temperature ... as request defaults
    max_tokens: int  # --max_tokens_limit


def refuse_unsupported(req: _Sampling) -> None:
    for key, value in (req.model_extra or {}).items():
        if key in UNSUPPORTED and value not in (None, False, 0, [], {}):
            raise ApiError(400, f"{key} is not supported by this server; leave it out", param=key)


def settings_for(req: _Sampling, limits: Limits, max_tokens: int | None) -> GenerationSettings:
    """Generation settings of a request: its own values, else the server's defaults, within the limits."""
    refuse_unsupported(req)
    d = limits.default
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {limits.max_tokens}",
                       param="max_tokens")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise ApiError(400, "stop takes at most 4 non-empty strings", param="stop")

    def pick(value, default):
        return default if value is None else value

    return GenerationSettings(
        max_new_tokens=pick(max_tokens, min(d.max_new_tokens, limits.max_tokens)),
        temperature=pick(req.temperature, d.temperature), top_p=pick(req.top_p, d.top_p),
        top_k=pick(req.top_k, d.top_k), repetition_penalty=pick(req.repetition_penalty, d.repetition_penalty),
        seed=pick(req.seed, d.seed), stop=tuple(stop) or d.stop)


def chat_requests(req: ChatRequest, adapters: tuple[str, ...], limits: Limits, policy: MediaPolicy) -> list[Request]:
    """``n`` engine requests for a chat request; images are checked against the policy, then loaded."""
    settings = settings_for(req, limits, req.max_completion_tokens or req.max_tokens)  # cheap checks first
    check_tool_request(req.tools, req.tool_choice, req.stream)
    rows = [m.model_dump(exclude_none=True) for m in req.messages]
    try:
        conv = parse_row({"messages": rows, **({"tools": req.tools} if req.tools else {})}, source="request",
                         need_reply=False)
    except TailorkitError as e:
        raise ApiError(400, str(e), param="messages") from None
    if conv.messages[-1]["role"] not in ("user", "tool"):
        raise ApiError(400, "the last message must be the user's (or a tool result)", param="messages")
    conv.images = load_request_images(conv.images, policy, param="messages.content.image_url")
    return [Request(conversation=conv, settings=settings, adapters=adapters) for _ in range(req.n)]


def completion_requests(req: CompletionRequest, adapters: tuple[str, ...], limits: Limits) -> list[Request]:
    """``n`` engine requests per prompt, prompts in order."""
    settings = settings_for(req, limits, req.max_tokens)
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts or any(not p for p in prompts):
        raise ApiError(400, "prompt must be a non-empty string or list of them", param="prompt")
    if len(prompts) * req.n > MAX_CHOICES:
        raise ApiError(400, f"at most {MAX_CHOICES} completions per request (prompts x n)", param="prompt")
    return [Request(prompt=p, settings=settings, adapters=adapters) for p in prompts for _ in range(req.n)]


def encode_checked(engine: Engine, requests: list[Request], param: str) -> None:
    """Encode each distinct prompt once (stored on the requests) and refuse prompts the model cannot fit."""
    done: dict[int | str, object] = {}
    for r in requests:
        key = id(r.conversation) if r.conversation is not None else r.prompt
        if key not in done:
            try:
                done[key] = engine.encode(r)
            except TailorkitError as e:
                raise ApiError(400, str(e), param=param) from None
            except ValueError as e:  # the processor's own checks (e.g. an image's aspect ratio)
                raise ApiError(400, f"the model's processor cannot take this input: {e}", param=param) from None
        r.encoded = done[key]
        limit = engine.max_context
        if limit and len(r.encoded) + r.settings.max_new_tokens > limit:
            raise ApiError(400, f"the prompt has {len(r.encoded)} tokens; with max_tokens "
                                f"{r.settings.max_new_tokens} it exceeds the model's context of {limit} tokens",
                           param=param)
