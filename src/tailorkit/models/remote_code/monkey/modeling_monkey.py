"""Tiny stand-in for Monkey's remote modeling code (Qwen-VL layout), with its published interface and module
names: ``transformer.wte``, ``transformer.h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.w1, mlp.w2,
mlp.c_proj}``, ``transformer.ln_f``, ``transformer.visual`` (a ViT: ``conv1``, ``positional_embedding``,
``ln_pre``, ``transformer.resblocks``, the ``attn_pool`` resampler, ``ln_post``, ``proj``) and ``lm_head``.

As published, there is no pixel input: the model finds each <img>PATH</img> span in ``input_ids`` (the bytes
of the path, then <imgpad>), opens the image file itself (``visual.encode``), runs the vision side on four
windows of the image at twice the crop size plus the whole image at the crop size, and writes the features
over the span. It is small and plain (no rotary embedding, no KV cache): it checks interfaces, not quality.
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_monkey import MonkeyConfig

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class Resampler(nn.Module):
    """n_queries learned queries cross-attend to the patch features (Qwen-VL's attn_pool)."""

    def __init__(self, n_queries, embed_dim, kv_dim, heads):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, embed_dim) * 0.02)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.attn = nn.MultiheadAttention(embed_dim, heads, batch_first=True)
        self.ln_q, self.ln_kv = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)

    def forward(self, x):
        kv = self.ln_kv(self.kv_proj(x))
        q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.attn(q, kv, kv, need_weights=False)[0]


class VisualBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class VisionTransformer(nn.Module):
    def __init__(self, image_size, patch_size, width, layers, heads, n_queries, output_dim, **kwargs):
        super().__init__()
        self.image_size = image_size
        self.conv1 = nn.Conv2d(3, width, patch_size, patch_size, bias=False)
        self.positional_embedding = nn.Parameter(torch.randn((image_size // patch_size) ** 2, width) * 0.02)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(VisualBlock(width, heads) for _ in range(layers))
        self.attn_pool = Resampler(n_queries, output_dim, width, 2)
        self.ln_post = nn.LayerNorm(output_dim)
        self.proj = nn.Parameter(output_dim ** -0.5 * torch.randn(output_dim, output_dim))

    def _pixels(self, image, size):
        array = np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
        return torch.from_numpy((array - np.float32(MEAN)) / np.float32(STD)).permute(2, 0, 1)

    def encode(self, image_paths):
        """(windows: 2 x 2 rows of [B, 3, s, s] crops of the image at 2s, whole images at s) from the files."""
        images = [Image.open(path).convert("RGB") for path in image_paths]
        s = self.image_size
        big = torch.stack([self._pixels(image, 2 * s) for image in images])
        windows = [[big[:, :, i:i + s, j:j + s] for j in (0, s)] for i in (0, s)]
        return windows, torch.stack([self._pixels(image, s) for image in images])

    def forward(self, x, idx=None):
        x = x.to(self.conv1.weight.dtype)
        x = self.conv1(x).flatten(2).transpose(1, 2) + self.positional_embedding
        x = self.ln_pre(x)
        for block in self.transformer.resblocks:
            x = block(x)
        return self.ln_post(self.attn_pool(x)) @ self.proj


class QWenAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, mask):
        b, t, d = x.shape
        q, k, v = (y.view(b, t, self.heads, -1).transpose(1, 2) for y in self.c_attn(x).split(d, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(out.transpose(1, 2).reshape(b, t, d))


class QWenMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden // 2, bias=False)
        self.w2 = nn.Linear(dim, hidden // 2, bias=False)
        self.c_proj = nn.Linear(hidden // 2, dim, bias=False)

    def forward(self, x):
        return self.c_proj(self.w1(x) * F.silu(self.w2(x)))


class QWenBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.attn = QWenAttention(config.hidden_size, config.num_attention_heads)
        self.ln_2 = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = QWenMLP(config.hidden_size, config.intermediate_size)

    def forward(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class MonkeyModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList(QWenBlock(config) for _ in range(config.num_hidden_layers))
        self.ln_f = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.visual = VisionTransformer(output_dim=config.hidden_size, **config.visual)

    def image_features(self, input_ids):
        """[(row, start, end)] of each <img>..</img> span and the features of the images their paths name."""
        start_id = self.config.visual["image_start_id"]
        rows, starts = torch.where(input_ids == start_id)
        _, ends = torch.where(input_ids == start_id + 1)
        paths = []
        for i, a, b in zip(rows.tolist(), starts.tolist(), ends.tolist()):
            span = input_ids[i][a + 1: b - 1].tolist()
            paths.append(bytes(span[: span.index(start_id + 2)] if start_id + 2 in span else span).decode("utf-8"))
        windows, whole = self.visual.encode(paths)
        local = [self.visual(crop.to(self.wte.weight.device), idx=k)
                 for k, crop in enumerate(c for row in windows for c in row)]
        features = torch.cat([*local, self.visual(whole.to(self.wte.weight.device))], dim=1)
        return list(zip(rows.tolist(), starts.tolist(), ends.tolist())), features

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, head_mask=None, inputs_embeds=None, use_cache=None, **kwargs):
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        if past_key_values is None and torch.any(input_ids == self.config.visual["image_start_id"]):
            spans, features = self.image_features(input_ids)
            x = x.clone()
            for k, (i, a, b) in enumerate(spans):
                x[i, a + 1: b] = features[k].to(x.dtype)
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
        for block in self.h:
            x = block(x, mask)
        return self.ln_f(x)


class MonkeyLMHeadModel(PreTrainedModel):
    config_class = MonkeyConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = False

    def __init__(self, config: MonkeyConfig):
        super().__init__(config)
        self.transformer = MonkeyModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, value):
        self.transformer.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, head_mask=None, inputs_embeds=None, labels=None, use_cache=None, **kwargs):
        hidden = self.transformer(input_ids, past_key_values, attention_mask, token_type_ids, position_ids,
                                  head_mask, inputs_embeds, use_cache)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)
