"""Tiny stand-in for MiniCPM-V 4.5's remote modeling code, with its published module names:
``vpm`` (SigLIP/NaViT vision transformer), ``resampler`` (perceiver resampler, the aligner) and ``llm``
(a Qwen3ForCausalLM). Unlike the published ``forward(data)``, forward takes the processor's tensors as
keyword arguments, as Hugging Face's Trainer passes them."""

import torch
from torch import nn
from transformers import Idefics2VisionConfig, PreTrainedModel, Qwen3ForCausalLM
from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer

from .configuration_minicpm import MiniCPMVConfig
from .tiny_remote_common import Resampler as BaseResampler


class Resampler(BaseResampler):
    """Published layout: the base resampler plus ln_post and proj."""

    def __init__(self, num_queries: int, embed_dim: int, kv_dim: int):
        super().__init__(num_queries, embed_dim, kv_dim)
        self.ln_post = nn.LayerNorm(embed_dim)
        self.proj = nn.Parameter(torch.randn(embed_dim, embed_dim) * embed_dim**-0.5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.ln_post(super().forward(features)) @ self.proj


class MiniCPMV(PreTrainedModel):
    config_class = MiniCPMVConfig
    base_model_prefix = "llm"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen3DecoderLayer"]

    def __init__(self, config: MiniCPMVConfig):
        super().__init__(config)
        self.llm = Qwen3ForCausalLM(config)
        self.vpm = Idefics2VisionTransformer(Idefics2VisionConfig(**config.vision_config))
        self.resampler = Resampler(config.query_num, config.hidden_size, config.vision_config["hidden_size"])
        self.post_init()

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.llm.get_output_embeddings()

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, tgt_sizes=None, labels=None,
                inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.llm.get_input_embeddings()(input_ids)
            if pixel_values is not None:
                features = self.resampler(self.vpm(pixel_values=pixel_values).last_hidden_state)
                mask = (input_ids == self.config.image_token_id).unsqueeze(-1)
                inputs_embeds = inputs_embeds.masked_scatter(mask, features.to(inputs_embeds.dtype))
        return self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)
