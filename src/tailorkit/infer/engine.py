"""The transformers inference engine: batched, left-padded `generate` over encoder-built prompts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.encode import Encoded, encode_prompt
from ..data.formats import Conversation


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def generate_kwargs(self) -> dict:
        kw = dict(max_new_tokens=self.max_new_tokens, repetition_penalty=self.repetition_penalty)
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw


def left_pad(prompts: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch of prompts (generation appends on the right)."""
    width = max(len(p) for p in prompts)

    def pad(rows, value):
        return torch.tensor([[value] * (width - len(r)) + r for r in rows], dtype=torch.long)

    batch = {"input_ids": pad([p.input_ids for p in prompts], pad_id),
             "attention_mask": pad([[1] * len(p) for p in prompts], 0)}
    for key in prompts[0].token_fields:
        batch[key] = pad([p.token_fields[key] for p in prompts], 0)
    for key in sorted({k for p in prompts for k in p.media}):
        batch[key] = torch.cat([p.media[key] for p in prompts if key in p.media], dim=0)
    return batch


class TransformersEngine:
    """Generation with a loaded model (plain or peft-wrapped) and its processor."""

    def __init__(self, model: torch.nn.Module, processor):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)

    @torch.no_grad()
    def generate(self, convs: list[Conversation], settings: GenerationSettings | None = None,
                 batch_size: int = 8) -> list[str]:
        """The reply to each conversation (its messages end with a user turn)."""
        settings = settings or GenerationSettings()
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        was_training = self.model.training
        self.model.eval()
        replies = []
        try:
            for i in range(0, len(convs), batch_size):
                prompts = [encode_prompt(c, self.processor) for c in convs[i: i + batch_size]]
                batch = left_pad(prompts, self.tokenizer.pad_token_id)
                device = next(self.model.parameters()).device
                batch = {k: v.to(device) for k, v in batch.items()}
                out = self.model.generate(**batch, **settings.generate_kwargs(),
                                          pad_token_id=self.tokenizer.pad_token_id)
                new = out[:, batch["input_ids"].shape[1]:]
                replies += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        finally:
            self.model.train(was_training)
        return [r.strip() for r in replies]
