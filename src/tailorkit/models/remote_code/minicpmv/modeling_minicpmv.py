"""Tiny stand-in for openbmb/MiniCPM-V-4_5's remote modeling code, with its published interface:
``llm`` (a transformers Qwen3ForCausalLM), ``vpm`` (a SigLIP vision transformer over patch rows, NaViT-style:
any grid, ``tgt_sizes`` gives each image's h x w patches, ``patch_attention_mask`` the valid ones) and
``resampler`` (query_num learned queries cross-attending to the patches with 2-D sin-cos positions).

``forward(data, **kwargs)`` takes one dict, as published: ``input_ids``, ``pixel_values`` (per sample a list
of [3, patch, L] slices), ``tgt_sizes`` (per sample), ``image_bound`` (per sample, the [start, end) token
range each slice's features replace) and ``position_ids``; ``kwargs`` (labels, attention_mask ...) go to the
LLM. A batch without images in training still runs a dummy image through the vision side, times zero.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3ForCausalLM, Qwen3PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_minicpm import MiniCPMVConfig


class VisionEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_dim, self.patch_size = config.hidden_size, config.patch_size
        self.patch_embedding = nn.Conv2d(3, self.embed_dim, config.patch_size, config.patch_size)
        self.num_patches_per_side = config.image_size // config.patch_size
        self.position_embedding = nn.Embedding(self.num_patches_per_side ** 2, self.embed_dim)

    def forward(self, pixel_values, patch_attention_mask, tgt_sizes=None):
        embeds = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        side = self.num_patches_per_side
        boundaries = torch.arange(1 / side, 1.0, 1 / side)
        position_ids = torch.zeros(embeds.shape[:2], dtype=torch.long)
        for i, mask in enumerate(patch_attention_mask):
            h, w = (int(tgt_sizes[i][0]), int(tgt_sizes[i][1])) if tgt_sizes is not None else (
                int(mask[:, 0].sum()), int(mask[0].sum()))
            rows = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / h), boundaries, right=True)
            cols = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / w), boundaries, right=True)
            position_ids[i][mask.view(-1).cpu()] = (rows[:, None] * side + cols).flatten()
        return embeds + self.position_embedding(position_ids.to(embeds.device))


class VisionLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        dim, self.heads = config.hidden_size, config.num_attention_heads
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, name, nn.Linear(dim, dim))
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, config.intermediate_size), nn.Linear(config.intermediate_size, dim)

    def forward(self, x, key_mask):
        b, t, d = x.shape
        a = self.self_attn
        y = self.layer_norm1(x)
        q, k, v = (p(y).view(b, t, self.heads, -1).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        x = x + a.out_proj(out.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.layer_norm2(x)), approximate="tanh"))


class MiniCPMVisionTransformer(nn.Module):
    """SigLIP over patch rows: [B, 3, patch, L] (or a plain [B, 3, H, W] image), valid patches masked."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(VisionLayer(config) for _ in range(config.num_hidden_layers))
        self.post_layernorm = nn.LayerNorm(config.hidden_size)

    def forward(self, pixel_values, patch_attention_mask=None, tgt_sizes=None):
        p = self.embeddings.patch_size
        if patch_attention_mask is None:
            patch_attention_mask = torch.ones((pixel_values.shape[0], pixel_values.shape[2] // p,
                                               pixel_values.shape[3] // p), dtype=torch.bool,
                                              device=pixel_values.device)
        x = self.embeddings(pixel_values, patch_attention_mask, tgt_sizes)
        key_mask = patch_attention_mask.reshape(x.shape[0], -1)
        for layer in self.encoder.layers:
            x = layer(x, key_mask)
        return BaseModelOutput(last_hidden_state=self.post_layernorm(x))


def sincos_2d(dim: int, h: int, w: int) -> np.ndarray:
    """[h, w, dim] fixed 2-D sine-cosine positions (half the channels per axis)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float32) / (dim / 4.0))
    grid = [np.outer(np.arange(n, dtype=np.float32), omega) for n in (h, w)]
    rows = np.concatenate([np.sin(grid[0]), np.cos(grid[0])], axis=1)[:, None, :].repeat(w, axis=1)
    cols = np.concatenate([np.sin(grid[1]), np.cos(grid[1])], axis=1)[None, :, :].repeat(h, axis=0)
    return np.concatenate([cols, rows], axis=-1)


class Resampler(nn.Module):
    """query_num learned queries attend to an image's patches (padding patches masked out)."""

    def __init__(self, num_queries, embed_dim, num_heads, kv_dim, adaptive=True):
        super().__init__()
        self.embed_dim, self.adaptive = embed_dim, adaptive
        self.query = nn.Parameter(torch.randn(num_queries, embed_dim) * 0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q, self.ln_kv, self.ln_post = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.proj = nn.Parameter(embed_dim ** -0.5 * torch.randn(embed_dim, embed_dim))

    def forward(self, x, tgt_sizes, temporal_ids=None):
        sizes = [(int(h), int(w)) for h, w in tgt_sizes]
        table = torch.from_numpy(sincos_2d(self.embed_dim, max(h for h, _ in sizes), max(w for _, w in sizes)))
        key_padding_mask = torch.zeros((x.shape[0], x.shape[1]), dtype=torch.bool, device=x.device)
        pos = torch.zeros(x.shape[0], x.shape[1], self.embed_dim, dtype=x.dtype, device=x.device)
        for i, (h, w) in enumerate(sizes):
            pos[i, : h * w] = table[:h, :w].reshape(-1, self.embed_dim).to(x.device, x.dtype)
            key_padding_mask[i, h * w:] = True
        kv = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, x.shape[0], 1)
        out = self.attn(q, kv + pos.permute(1, 0, 2), kv, key_padding_mask=key_padding_mask)[0]
        return self.ln_post(out.permute(1, 0, 2)) @ self.proj


class MiniCPMVPreTrainedModel(Qwen3PreTrainedModel):
    config_class = MiniCPMVConfig


class MiniCPMV(MiniCPMVPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.llm = Qwen3ForCausalLM(config)
        self.vpm = self.init_vision_module()
        self.vision_dim = self.vpm.embeddings.embed_dim
        self.embed_dim = self.llm.config.hidden_size
        self.resampler = self.init_resampler(self.embed_dim, self.vision_dim)
        self.processor = None
        self.post_init()

    def init_vision_module(self):
        model = MiniCPMVisionTransformer(self.config.vision_config)
        if self.config.drop_vision_last_layer:
            model.encoder.layers = model.encoder.layers[:-1]
        return model

    def init_resampler(self, embed_dim, vision_dim):
        # published: embed_dim // 128 heads; the tiny LLM is narrower than one head of the real one
        return Resampler(self.config.query_num, embed_dim, max(1, embed_dim // 128), vision_dim)

    def get_input_embeddings(self):
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.llm.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.llm.lm_head = new_embeddings

    def get_decoder(self):
        return self.llm

    def _vision_features(self, data, dtype, device):
        """Per sample: a [slices, query_num, dim] tensor of its images' features, or [] (a dummy in training)."""
        pixel_values_list = data["pixel_values"]
        flat = [s.flatten(end_dim=1).permute(1, 0) for sample in pixel_values_list for s in sample]
        if not flat:
            if not self.training:
                return [[] for _ in pixel_values_list]
            side = 224 // self.config.patch_size
            dummy = self.resampler(self.vpm(torch.zeros((1, 3, 224, 224), device=device, dtype=dtype))
                                   .last_hidden_state, torch.tensor([[side, side]]))
            return [dummy for _ in pixel_values_list]
        tgt_sizes = torch.vstack([t for t in data["tgt_sizes"] if isinstance(t, torch.Tensor)]).to(torch.int32)
        pixels = torch.nn.utils.rnn.pad_sequence(flat, batch_first=True, padding_value=0.0)
        b, length, _ = pixels.shape
        pixels = pixels.permute(0, 2, 1).reshape(b, 3, -1, length).to(dtype)
        max_patches = int((tgt_sizes[:, 0] * tgt_sizes[:, 1]).max())
        mask = torch.zeros((b, 1, max_patches), dtype=torch.bool, device=device)
        for i, (h, w) in enumerate(tgt_sizes):
            mask[i, 0, : int(h) * int(w)] = True
        step = self.config.vision_batch_size
        hidden = torch.cat([self.vpm(pixels[i:i + step], patch_attention_mask=mask[i:i + step],
                                     tgt_sizes=tgt_sizes[i:i + step]).last_hidden_state for i in range(0, b, step)])
        features = self.resampler(hidden, tgt_sizes)
        out, start = [], 0
        for sample in pixel_values_list:
            out.append(features[start:start + len(sample)] if len(sample) else [])
            start += len(sample)
        return out

    def get_vllm_embedding(self, data):
        embed = self.llm.model.embed_tokens
        vision_hidden_states = data.get("vision_hidden_states")
        if vision_hidden_states is None:
            vision_hidden_states = self._vision_features(data, embed.weight.dtype, embed.weight.device)
        vllm_embedding = embed(data["input_ids"])
        for i, features in enumerate(vision_hidden_states):
            if len(features) == 0:
                continue
            bounds = data["image_bound"][i]
            row = vllm_embedding[i]
            if len(bounds) > 0:
                index = torch.cat([torch.arange(int(a), int(b)) for a, b in bounds]).to(row.device)
                row.scatter_(0, index.view(-1, 1).repeat(1, row.shape[-1]),
                             features.to(row.dtype).reshape(-1, row.shape[-1]))
            elif self.training:
                row += features[0].mean() * 0  # the vision side stays in the graph (DDP, ZeRO)
        return vllm_embedding, vision_hidden_states

    def forward(self, data, **kwargs):
        vllm_embedding, _ = self.get_vllm_embedding(data)
        position_ids = data["position_ids"].long()
        for key in ("input_ids", "inputs_embeds", "position_ids"):
            kwargs.pop(key, None)
        return self.llm(input_ids=None, position_ids=position_ids, inputs_embeds=vllm_embedding, **kwargs)
