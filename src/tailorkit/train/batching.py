"""How training batches are formed: padded (default), padding-free or packed; evaluation is always padded."""

from __future__ import annotations

from ..config.train import SftConfig
import torch

from ..data.collate import Collator
from ..data.dataset import StreamingEncoded
from ..data.packing import FlatCollator, PackedSet, PackReport, pack, pack_indices, rope_index_fn, to_segments
from ..errors import ConfigError
from .attention import use_packed_attention


def check_batching(cfg: SftConfig) -> None:
    """Settings that cannot be combined, rejected before any weights load."""
    if cfg.data.packing and cfg.train.group_by_length:
        raise ConfigError("--group_by_length has nothing to group when --packing is on (packs are already full); "
                          "use one of them")
    if cfg.data.packing or cfg.data.padding_free:
        check_family_packs(cfg)


def check_family_packs(cfg: SftConfig) -> None:
    """Refuse --packing/--padding_free for a registered family that declares it cannot pack exactly."""
    from ..models.load import detect_family, model_config

    m = cfg.model
    if m.model is None:  # load_bundle says so
        return
    family = detect_family(model_config(m), m.model_type)
    if family is not None and family.packing_refusal:
        flag = "--packing" if cfg.data.packing else "--padding_free"
        raise ConfigError(f"{flag} is not supported for the {family.name} family: {family.packing_refusal}; "
                          f"train it with padded batches (drop {flag})")


class Singletons(torch.utils.data.IterableDataset):
    """A stream's samples one by one as one-sample packs: padding-free batches of a stream."""

    def __init__(self, stream: StreamingEncoded):
        self.stream = stream

    def __iter__(self):
        return ([sample] for sample in self.stream)


def train_batches(cfg: SftConfig, model, train_set, pad_token_id: int):
    """(train items, collator, pack report or None) for the configured batching.

    ``train_set``: an ``EncodedSet`` (packed by its lengths; samples load per batch), a stream (packed from a
    bounded buffer) or a list of Encoded samples. With packing or padding-free the model switches to segment-aware attention (see
    ``train.attention``), which keeps packed samples isolated whatever ``use_cache`` is set to.
    """
    d = cfg.data
    if not (d.packing or d.padding_free):
        return train_set, Collator(pad_token_id), None
    name = use_packed_attention(model, cfg.model.attn_impl)
    capacity = d.packing_length or d.max_length
    report: PackReport | None = None
    if isinstance(train_set, list):
        items: list = to_segments(train_set, model)
        if d.packing:
            items, report = pack(items, capacity, truncation=d.truncation_strategy)
        collator = FlatCollator(pad_token_id)
    elif isinstance(train_set, StreamingEncoded):  # packs from a bounded buffer of the stream (or one sample each)
        items = train_set if train_set.packing_length is not None else Singletons(train_set)
        collator = FlatCollator(pad_token_id, rope_index_fn(model))
    else:
        packs = None
        if d.packing:
            packs, report = pack_indices(train_set.lengths, capacity, truncation=d.truncation_strategy)
        items, collator = PackedSet(train_set, packs), FlatCollator(pad_token_id, rope_index_fn(model))
    if report is not None:
        print(f"[tailorkit] {report.summary()}")
        if not len(items):
            raise ConfigError("no training sample is left after packing")
    print(f"[tailorkit] {'packing' if d.packing else 'padding-free'} batches with attention {name}")
    return items, collator, report
