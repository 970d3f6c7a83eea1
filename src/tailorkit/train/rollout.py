"""Rollouts of the online algorithms (grpo, ppo, gkd's on-policy samples): completions of encoder-built prompts.

A single-turn rollout generates from the prompt tokens ``encode_prompt`` built before training (checked
per batch against the training encoding) and trains on exactly the generated tokens. A multi-turn rollout
alternates model turns with the messages of a user plugin (``--multi_turn_scheduler``): each model turn
starts from the conversation so far encoded by the one encoder, and the whole conversation is encoded
again at the end with labels on the model's turns only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..data.collate import Collator, left_pad
from ..data.encode import IGNORE, Encoded, encode, encode_prompt
from ..data.preference import EncodedPrompt, check_prompt_matches
from ..errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """How completions are sampled."""

    max_completion_length: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def generate_kwargs(self) -> dict:
        return dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None,
                    max_new_tokens=self.max_completion_length, use_cache=True)


@dataclass
class Rollout:
    """Completions of a batch of prompts, ``n`` per prompt, in prompt order."""

    samples: list[EncodedPrompt]  # one per completion (each prompt repeated n times)
    sequences: list[Encoded]  # what trains: prompt + completion, labels on the model's tokens only
    texts: list[str]  # the (last) model reply of each completion, decoded
    completion_ids: list[list[int]]  # the supervised token ids of each sequence
    truncated: list[bool]  # a model turn hit --max_completion_length without ending
    messages: list[list[dict]] | None = None  # multi-turn: the whole conversation
    stats: dict[str, float] = field(default_factory=dict)  # counts to log (multi-turn turns, stops)

    def columns(self) -> dict[str, list]:
        """The rows' other columns, one value per completion, plus what the reward functions get from us."""
        rows = [s.sample.columns for s in self.samples]
        out = {k: [row.get(k) for row in rows] for k in sorted({k for row in rows for k in row})}
        out["completion_ids"] = self.completion_ids
        out["completion_lengths"] = [len(c) for c in self.completion_ids]
        out["messages"] = self.conversation_messages()
        return out

    def conversation_messages(self) -> list[list[dict]]:
        """Each completion's whole conversation: the prompt's messages and the model's turns."""
        if self.messages is not None:
            return self.messages
        return [s.sample.conv.messages + [{"role": "assistant", "content": t}] for s, t in zip(self.samples, self.texts)]


class Sampler:
    """Generates rollouts with ``model.generate`` from encoded prompts, single- or multi-turn."""

    def __init__(self, processor, sampling: Sampling, *, scheduler: Callable | None = None,
                 max_turns: int | None = None, max_length: int | None = None):
        self.processor, self.sampling = processor, sampling
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.scheduler, self.max_turns, self.max_length = scheduler, max_turns, max_length
        self.collate = Collator(self.tokenizer.pad_token_id)

    def rollout(self, model, samples: list[EncodedPrompt], n: int = 1) -> Rollout:
        """``n`` completions of each prompt (model in eval mode while generating, no gradients)."""
        repeated = [s for s in samples for _ in range(n)]
        if self.scheduler is not None:
            return self._multi_turn(model, repeated)
        completions, truncated = self.generate(model, [s.prompt for s in repeated], check=repeated[::n])
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        sequences = [Encoded(input_ids=s.prompt.input_ids + c, labels=[IGNORE] * len(s.prompt) + c,
                             media=s.prompt.media,
                             token_fields={k: v + [0] * len(c) for k, v in s.prompt.token_fields.items()})
                     for s, c in zip(repeated, completions)]
        return Rollout(repeated, sequences, texts, completions, truncated)

    @torch.no_grad()
    def generate(self, model, prompts: list[Encoded], check: list[EncodedPrompt] = ()
                 ) -> tuple[list[list[int]], list[bool]]:
        """(completion ids up to and including the end of sequence, whether each was cut at the length limit).

        ``check``: samples whose prompt is the first of every ``len(prompts) // len(check)`` rows; generation
        must have seen exactly the training encoding's prompt tokens (raises otherwise).
        """
        batch = left_pad(prompts, self.tokenizer.pad_token_id)
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        was_training = model.training
        model.eval()
        try:
            out = model.generate(**batch, **self.sampling.generate_kwargs(), pad_token_id=self.tokenizer.pad_token_id)
        finally:
            model.train(was_training)
        width = batch["input_ids"].shape[1]
        eos = self._eos_ids(model)
        cut = [_cut(row.tolist(), eos) for row in out[:, width:]]
        step = len(prompts) // max(len(check), 1)
        for i, sample in enumerate(check):  # the prompt tokens generation saw, pads removed
            seen = out[i * step, :width][batch["attention_mask"][i * step].bool()].tolist()
            check_prompt_matches(sample.sample, seen, self.tokenizer.decode(cut[i * step][0], skip_special_tokens=True),
                                 self.processor)
        return [c for c, _ in cut], [not ended for _, ended in cut]

    def _eos_ids(self, model) -> set[int]:
        eos = getattr(model.generation_config, "eos_token_id", None) or self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    def _multi_turn(self, model, samples: list[EncodedPrompt]) -> Rollout:
        """Model turns and scheduler messages alternate until the scheduler stops, --max_turns or --max_length."""
        convs = [list(s.sample.conv.messages) for s in samples]
        prompts = [s.prompt for s in samples]
        truncated = [False] * len(samples)
        last = [""] * len(samples)
        active, turns, stats = list(range(len(samples))), 0, {"turns": 0.0, "stopped_by_max_length": 0.0}
        while active:
            ids, cut = self.generate(model, [prompts[i] for i in active], check=[samples[i] for i in active]
                                     if turns == 0 else ())
            turns += 1
            still = []
            for i, completion, was_cut in zip(active, ids, cut):
                last[i] = self.tokenizer.decode(completion, skip_special_tokens=True)
                truncated[i] = truncated[i] or was_cut
                convs[i].append({"role": "assistant", "content": last[i]})
                stats["turns"] += 1
                if self.max_turns is not None and turns >= self.max_turns:
                    continue
                message = checked_message(self.scheduler(list(convs[i]), **samples[i].sample.columns),
                                          self.scheduler)
                if message is None:
                    continue
                convs[i].append(message)
                prompt = encode_prompt(dataclasses.replace(samples[i].sample.conv, messages=convs[i]), self.processor)
                if self.max_length is not None and len(prompt) >= self.max_length:
                    stats["stopped_by_max_length"] += 1
                    convs[i].pop()
                    continue
                prompts[i] = prompt
                still.append(i)
            active = still
        sequences = [self._model_turns(s, conv) for s, conv in zip(samples, convs)]
        completion_ids = [[t for t in seq.labels if t != IGNORE] for seq in sequences]
        stats["turns"] /= max(len(samples), 1)  # mean model turns per conversation
        return Rollout(samples, sequences, last, completion_ids, truncated, convs, stats)

    def _model_turns(self, sample: EncodedPrompt, messages: list[dict]) -> Encoded:
        """The whole conversation encoded; labels only after the dataset's prompt (the model's turns)."""
        enc = encode(dataclasses.replace(sample.sample.conv, messages=messages), self.processor)
        start = len(sample.prompt)
        if enc.input_ids[:start] != sample.prompt.input_ids:
            raise sample.sample.conv.error("the multi-turn conversation's encoding does not start with its prompt's "
                                           "encoding", field="messages",
                                           fix="the chat template must render a conversation's prefix as its prefix")
        enc.labels[:start] = [IGNORE] * start
        return enc


def _cut(tokens: list[int], eos: set[int]) -> tuple[list[int], bool]:
    """(tokens up to and including the first end-of-sequence token, whether one was found)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1], True
    return tokens, False


ROLES = ("user", "tool")


def checked_message(message, scheduler: Callable) -> dict | None:
    """A scheduler's answer: None (stop) or {"role": "user"|"tool", "content": str}; anything else raises."""
    if message is None:
        return None
    name = getattr(scheduler, "__name__", "multi_turn_scheduler")
    if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"),
                                                                                              str):
        raise ConfigError(f"multi_turn_scheduler {name} returned {message!r}; it must return None (stop) or "
                          "{'role': 'user' or 'tool', 'content': '<text>'}")
    return {"role": message["role"], "content": message["content"]}


def rollout_batch(rollout: Rollout, collate: Callable, device) -> dict:
    """The padded training batch of a rollout's sequences on ``device``."""
    return {k: v.to(device) for k, v in collate(rollout.sequences).items()}
