"""Ulysses sequence parallel (``--sequence_parallel_size k``): each sequence's decoder work split across k ranks.

The k ranks of a group receive the same batch (``RepeatedBatches``). Just before the language model runs, a
hook cuts its input embeddings and positions along the sequence into k shards (cuts never fall inside a
media span: the placeholder tokens with their start/end tokens), each padded to the longest shard; rank r
keeps shard r. In every attention layer an all-to-all turns (all heads, my shard) into (my 1/k of the
heads, the whole sequence), attention runs causally over the whole sequence (within each packed sample,
without padded keys), and the inverse all-to-all brings back (all heads, my shard). Each rank computes the
loss of its shard's tokens (labels shifted before the cut); the sum over ranks is the loss of one process.
Everything before the language model (embeddings, vision tower) runs whole on every rank; the gradients
of each rank cover only its shard, so the DDP average (times k, see ``loss``) is the one-process gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..data.encode import IGNORE
from ..models.family import Family

ATTENTION = "tailorkit_ulysses"


class _SeqToHeads(torch.autograd.Function):
    """[B, H, M, d] (all heads, my shard) -> [B, H/k, k*M, d] (my heads, every shard); backward: the inverse."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return seq_to_heads(x, group)

    @staticmethod
    def backward(ctx, grad):
        return heads_to_seq(grad.contiguous(), ctx.group), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return heads_to_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return seq_to_heads(grad.contiguous(), ctx.group), None


def seq_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    k = dist.get_world_size(group)
    b, h, m, d = x.shape
    send = x.reshape(b, k, h // k, m, d).permute(1, 0, 2, 3, 4).contiguous()  # chunk j of the heads goes to rank j
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[i]: rank i's shard of my heads
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // k, k * m, d)


def heads_to_seq(x: torch.Tensor, group) -> torch.Tensor:
    k = dist.get_world_size(group)
    b, hk, km, d = x.shape
    m = km // k
    send = x.reshape(b, hk, k, m, d).permute(2, 0, 1, 3, 4).contiguous()  # shard j of the sequence goes to rank j
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[i]: my shard of rank i's heads
    return recv.permute(1, 0, 2, 3, 4).reshape(b, k * hk, m, d)


@dataclass
class Cut:
    """How one batch's sequence is split: shard r holds original positions cuts[r]..cuts[r+1] (padded to width)."""

    cuts: list[int]
    width: int
    index: torch.Tensor  # [k * width] original position of each slot (clamped for padding slots)
    valid: torch.Tensor  # [k * width] slot holds a real position
    mask: torch.Tensor  # [B, 1, k * width, k * width] attention allowed (causal, same sample, real key)


def media_ids(config) -> set[int]:
    """Token ids that belong to media spans: placeholders and their start/end tokens, from the model config."""
    names = ("image_token_id", "video_token_id", "audio_token_id", "image_token_index", "vision_start_token_id",
             "vision_end_token_id")
    return {int(v) for n in names if isinstance(v := getattr(config, n, None), int)}


def choose_cuts(input_ids: torch.Tensor, k: int, media: set[int]) -> list[int]:
    """k shards of near-equal length whose borders fall outside every media span of every row (a shard may be
    empty when a span is longer than a shard: it then stays whole on one rank)."""
    length = input_ids.shape[1]
    inside = torch.zeros(length + 1, dtype=torch.bool)  # inside[t]: a cut before position t splits a span
    if media:
        is_media = torch.isin(input_ids.cpu(), torch.tensor(sorted(media))).any(0)
        inside[1:length] = is_media[1:] & is_media[:-1]
    cuts = [0]
    for j in range(1, k):
        target = max(round(j * length / k), cuts[-1])
        allowed = [t for t in range(cuts[-1], length + 1) if not inside[t]]  # never empty: `length` is allowed
        cuts.append(min(allowed, key=lambda t: (abs(t - target), t)))
    return cuts + [length]


class SequenceParallel:
    """Hooks and attention that split the language model's sequence across ``size`` ranks (see module doc)."""

    def __init__(self, model: torch.nn.Module, family: Family, size: int):
        self.size = size
        self.group, self.rank = _my_group(size)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.llm = base.get_submodule(family.llm[0])
        self.media = media_ids(base.config) | media_ids(getattr(base.config, "text_config", base.config))
        self.current: Cut | None = None  # the cut of the batch being trained (None: no split)
        self.last: Cut | None = None  # the last batch's cut, kept for reports and tests
        _register(self)
        self.llm.set_attn_implementation(ATTENTION)
        self.llm.register_forward_pre_hook(self._shard, with_kwargs=True)

    def split(self, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
        """Plan the cut of this training batch and return this rank's labels, shifted (label of the next token).

        Evaluation batches are not split (they are dealt to ranks as in DDP): the hooks then pass through.
        """
        cut = self.plan(inputs["input_ids"], inputs.get("attention_mask"), inputs.get("position_ids"))
        self.current = self.last = cut
        shifted = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE)], dim=1)
        mine = cut.index[self.rank * cut.width:(self.rank + 1) * cut.width].to(labels.device)
        local = shifted[:, mine]
        local[:, ~cut.valid[self.rank * cut.width:(self.rank + 1) * cut.width].to(labels.device)] = IGNORE
        return local

    def loss(self, logits: torch.Tensor, local_labels: torch.Tensor, num_items) -> torch.Tensor:
        """This rank's share: CE of its tokens / the step's token count, times k (the group's ranks hold the
        same batch, so the Trainer counted every token k times)."""
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), local_labels.reshape(-1),
                              ignore_index=IGNORE, reduction="sum")
        count = torch.as_tensor(num_items, device=nll.device, dtype=nll.dtype)
        return nll / torch.clamp(count, min=1) * self.size

    def plan(self, input_ids: torch.Tensor, attention_mask, position_ids) -> Cut:
        cuts = choose_cuts(input_ids, self.size, self.media)
        width = max(b - a for a, b in zip(cuts, cuts[1:]))
        offsets = torch.arange(width)
        index = torch.cat([a + offsets for a in cuts[:-1]])
        valid = torch.cat([offsets < (b - a) for a, b in zip(cuts, cuts[1:])])
        index = index.clamp(max=input_ids.shape[1] - 1)
        return Cut(cuts, width, index, valid, _mask(index, valid, attention_mask, position_ids, input_ids.shape))

    def _shard(self, module, args, kwargs):
        cut = self.current
        if cut is None:
            return None
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = module.get_input_embeddings()(kwargs["input_ids"])
        b, length = embeds.shape[:2]
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(length, device=embeds.device).expand(b, length)
        mine = cut.index[self.rank * cut.width:(self.rank + 1) * cut.width].to(embeds.device)
        kwargs.update(input_ids=None, inputs_embeds=embeds[:, mine], position_ids=positions[..., mine],
                      attention_mask=None, cache_position=None, use_cache=False)
        return args, kwargs

    def attention(self, module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
        """The attention function: all-to-all to whole sequences, causal sdpa, all-to-all back; [B, M, H, d]."""
        cut = self.current
        if cut is None or not module.training:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        if key.shape[1] % self.size:  # fewer key/value heads than ranks: give each rank its own copies
            repeat = query.shape[1] // key.shape[1]
            key, value = (t.repeat_interleave(repeat, dim=1) for t in (key, value))
        q, k, v = (_SeqToHeads.apply(t.contiguous(), self.group) for t in (query, key, value))
        if k.shape[1] != q.shape[1]:
            k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=cut.mask.to(q.device), scale=scaling)
        return _HeadsToSeq.apply(out.contiguous(), self.group).transpose(1, 2).contiguous(), None


def _mask(index, valid, attention_mask, position_ids, shape) -> torch.Tensor:
    """[B, 1, S, S] over the k padded shards: causal in original positions, within one packed sample, real keys."""
    b, length = shape
    real = attention_mask.bool().cpu() if attention_mask is not None else torch.ones(b, length, dtype=torch.bool)
    if position_ids is not None and position_ids.dim() == 3:  # mRoPE rows [text; t; h; w]: the text row
        position_ids = position_ids[0]
    if position_ids is not None and position_ids.dim() == 2 and position_ids.shape[-1] == length:
        sample = (position_ids.cpu() == 0).cumsum(-1)  # packed rows: positions restart at 0 per sample
    else:
        sample = torch.zeros(b, length, dtype=torch.long)
    q, k = index[:, None], index[None, :]
    allowed = (k <= q) & valid[None, :] & valid[:, None]
    same_sample = sample[:, index][:, :, None] == sample[:, index][:, None, :]
    allowed = allowed[None] & real[:, index][:, None, :] & same_sample
    allowed |= torch.eye(len(index), dtype=torch.bool)[None]  # padding slots attend to themselves (no NaN rows)
    return allowed[:, None]


_ACTIVE: list[SequenceParallel] = []


def _register(sp: SequenceParallel) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    _ACTIVE[:] = [sp]  # the run being prepared; an earlier run's object is dropped
    AttentionInterface.register(ATTENTION, lambda *args, **kwargs: _ACTIVE[0].attention(*args, **kwargs))
    AttentionMaskInterface.register(ATTENTION, lambda *args, **kwargs: None)  # the attention builds its own


def _my_group(size: int):
    """(this rank's sequence-parallel process group, its rank inside it): consecutive ranks form a group."""
    world, rank = dist.get_world_size(), dist.get_rank()
    mine = None
    for start in range(0, world, size):  # every rank creates every group, in the same order
        group = dist.new_group(list(range(start, start + size)))
        if start <= rank < start + size:
            mine = group
    return mine, rank % size


class RepeatedBatches(torch.utils.data.Sampler):
    """Each batch of ``inner``'s indices ``size`` times in a row. accelerate deals the i-th batch to rank
    i % world, so the ``size`` consecutive ranks of a sequence-parallel group receive the same batch."""

    def __init__(self, inner, batch_size: int, size: int):
        self.inner, self.batch_size, self.size = inner, batch_size, size

    def __iter__(self):
        batch: list[int] = []
        for i in self.inner:
            batch.append(i)
            if len(batch) == self.batch_size:
                for _ in range(self.size):
                    yield from batch
                batch = []
        for _ in range(self.size if batch else 0):
            yield from batch

    def __len__(self) -> int:
        return len(self.inner) * self.size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)


def seeded_order(dataset, data_seed: int | None):
    """The shuffled order one process would use: accelerate's seedable sampler, built as accelerate builds it."""
    from accelerate.data_loader import SeedableRandomSampler

    return SeedableRandomSampler(data_source=dataset, generator=torch.Generator(), data_seed=data_seed)
