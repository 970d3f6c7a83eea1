"""Shared by the tiny remote-code look-alikes (copied next to each family's files at build time, as a Hub
repository would carry it): a placeholder-expanding processor and a perceiver resampler."""

import torch
from torch import nn
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import BatchEncoding


class PlaceholderProcessor(ProcessorMixin):
    """Each ``placeholder`` in the prompt becomes ``start`` + n_queries ``pad`` tokens + ``end``."""

    placeholder = start = pad = end = ""

    def __init__(self, image_processor=None, tokenizer=None, n_queries=4, chat_template=None, **kwargs):
        self.n_queries = n_queries
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.pad)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(self, text=None, images=None, return_tensors=None, **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        n_images = sum(t.count(self.placeholder) for t in texts)
        if n_images != len(images or []):
            raise ValueError(f"{n_images} {self.placeholder} placeholders but {len(images or [])} images")
        expanded = [t.replace(self.placeholder, self.start + self.pad * self.n_queries + self.end) for t in texts]
        kwargs.pop("padding", None)
        data = dict(self.tokenizer(expanded, return_tensors=return_tensors, **kwargs))
        if images:
            data.update(self.image_processor(images, return_tensors=return_tensors))
        return BatchEncoding(data=data, tensor_type=return_tensors)


class Resampler(nn.Module):
    """num_queries learned queries cross-attend to the vision features."""

    def __init__(self, num_queries: int, embed_dim: int, kv_dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(num_queries, embed_dim) * 0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.attn = nn.MultiheadAttention(embed_dim, 2, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim)
        self.ln_kv = nn.LayerNorm(embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        kv = self.ln_kv(self.kv_proj(features))
        q = self.ln_q(self.query).unsqueeze(0).expand(features.shape[0], -1, -1)
        return self.attn(q, kv, kv, need_weights=False)[0]
