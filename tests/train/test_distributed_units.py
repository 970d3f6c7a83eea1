"""The distributed pieces that need no second process: launch command, presets, the dummy vision pass, memory."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from tailorkit.config.distributed import DistributedArgs
from tailorkit.config.train import ModelArgs, TrainArgs, TunerArgs
from tailorkit.data.collate import Collator
from tailorkit.data.dataset import encode_all, load_conversations
from tailorkit.demo.shapes import write_split
from tailorkit.distributed.deepspeed import deepspeed_config, zero_stage
from tailorkit.distributed.engines import engine_arguments, explain_collective_error, static_graph
from tailorkit.distributed.launch import torchrun_command
from tailorkit.distributed.media import MediaCollectives
from tailorkit.errors import ConfigError
from tailorkit.models.load import load_bundle
from tailorkit.models.registry import family_for_config
from tailorkit.train.losses import sft_loss
from tailorkit.train.memory import SETTINGS, estimate_memory, recommend, shard

from helpers import text_chat_rows, write_jsonl


def test_nproc_per_node_becomes_a_torchrun_command_with_the_multi_node_variables():
    env = {"NPROC_PER_NODE": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29501"}
    cmd = torchrun_command(["sft", "--model", "m"], env)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc_per_node", "8", "--nnodes", "2", "--node_rank", "1",
                       "--master_addr", "10.0.0.1", "--master_port", "29501", "-m", "tailorkit", "sft", "--model", "m"]
    assert torchrun_command(["sft"], {}) is None  # one process: nothing to launch
    assert torchrun_command(["infer"], {"NPROC_PER_NODE": "2"}) is None  # only training verbs
    assert torchrun_command(["sft"], {"NPROC_PER_NODE": "2", "LOCAL_RANK": "0"}) is None  # already launched
    with pytest.raises(ConfigError, match="NNODES > 1 needs MASTER_ADDR"):
        torchrun_command(["sft"], {"NPROC_PER_NODE": "2", "NNODES": "2"})
    with pytest.raises(ConfigError, match="NPROC_PER_NODE='two'"):
        torchrun_command(["rlhf"], {"NPROC_PER_NODE": "two"})


@pytest.mark.parametrize("preset, stage, offload", [("zero0", 0, False), ("zero1", 1, False), ("zero2", 2, False),
                                                    ("zero3", 3, False), ("zero2_offload", 2, True),
                                                    ("zero3_offload", 3, True)])
def test_deepspeed_presets_keep_our_optimizer_and_run_on_cpu(preset, stage, offload):
    dist = DistributedArgs(deepspeed=preset)
    config = deepspeed_config(dist)
    assert config["zero_optimization"]["stage"] == stage == zero_stage(dist)
    assert ("offload_optimizer" in config["zero_optimization"]) == offload
    assert "optimizer" not in config and config["zero_force_ds_cpu_optimizer"] is False
    import deepspeed.ops

    assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False  # no C++ build on CPU


def test_a_deepspeed_json_file_is_passed_through(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}')
    dist = DistributedArgs(deepspeed=str(path))
    assert deepspeed_config(dist) == str(path) and zero_stage(dist) == 3


def test_ddp_flags_reach_the_trainer_and_static_graph_only_for_forced_reentrant_checkpointing():
    dist = DistributedArgs(ddp_find_unused_parameters=True, ddp_backend="gloo", ddp_timeout=60, ddp_bucket_cap_mb=10)
    args = engine_arguments(dist, TrainArgs())
    assert (args["ddp_find_unused_parameters"], args["ddp_backend"], args["ddp_timeout"],
            args["ddp_bucket_cap_mb"]) == (True, "gloo", 60, 10)
    reentrant = TrainArgs(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    assert static_graph(DistributedArgs(), reentrant)
    assert not static_graph(DistributedArgs(), TrainArgs(gradient_checkpointing=True))  # default: non-reentrant
    assert not static_graph(DistributedArgs(ddp_find_unused_parameters=True), reentrant)


def test_the_ready_twice_error_says_what_to_change():
    hint = explain_collective_error(RuntimeError("Expected to mark a variable ready only once. This error ..."))
    assert "use_reentrant" in hint and "--ddp_find_unused_parameters false" in hint
    assert explain_collective_error(RuntimeError("CUDA out of memory")) is None


def test_sequence_parallel_and_fsdp_settings_are_checked():
    with pytest.raises(ConfigError, match="runs on DDP"):
        DistributedArgs(sequence_parallel_size=2, deepspeed="zero2")
    with pytest.raises(ConfigError, match="--fsdp_config is set but --fsdp is not"):
        DistributedArgs(fsdp_config='{"cpu_offload": true}')
    assert DistributedArgs(fsdp="full_shard offload", fsdp_config='{"reshard_after_forward": false}').fsdp_config \
        == {"reshard_after_forward": False}


@pytest.fixture(scope="module")
def vl(tiny_vl_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    bundle = load_bundle(ModelArgs(model=str(tiny_vl_dir), torch_dtype="float32"))
    image = load_conversations([str(write_split(root, "img", 1, seed=2))], system=None, seed=0)
    text = load_conversations([str(write_jsonl(root / "t.jsonl", text_chat_rows(1)))], system=None, seed=0)
    encoded, _ = encode_all(image + text, bundle.processor, max_length=256, truncation="raise", desc="x")
    return bundle, [Collator(bundle.tokenizer.pad_token_id)([e]) for e in encoded]


def _loss_and_vision_grads(model, batch):
    model.zero_grad()
    inputs = dict(batch)
    labels = inputs.pop("labels")
    loss = sft_loss(model(**inputs, use_cache=False).logits, labels)
    loss.backward()
    return loss.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def test_dummy_vision_pass_runs_on_text_batches_only_and_changes_no_number(vl):
    bundle, (image_batch, text_batch) = vl
    model = bundle.model.train()
    plain = [_loss_and_vision_grads(model, b) for b in (image_batch, text_batch)]
    hooks = MediaCollectives(model, bundle.family)
    try:
        hooked = [_loss_and_vision_grads(model, b) for b in (image_batch, text_batch)]
    finally:
        hooks.remove()
    assert hooks.dummy_passes == 1  # the text batch only
    for (loss, grads), (loss2, grads2) in zip(plain, hooked):
        assert torch.equal(loss, loss2)
        for name, g in grads.items():
            g2 = grads2[name]
            if g is None:  # the text batch left the vision tower without gradients; the dummy gives exact zeros
                assert g2 is None or not g2.any(), name
            else:
                assert torch.equal(g, g2), name
    text_grads = hooked[1][1]
    assert all(text_grads[n] is not None for n in text_grads if n.startswith("model.visual."))


def test_memory_estimate_shards_per_zero_stage_and_recommends_the_fastest_that_fits(tiny_vl_dir):
    config = AutoConfig.from_pretrained(tiny_vl_dir)
    fam, tuner = family_for_config(config), TunerArgs(train_type="full")

    def est(world=1, **dist):
        return estimate_memory(config, fam, tuner, TrainArgs(), dtype=torch.float32, seq_len=128, world_size=world,
                               dist=DistributedArgs(**dist) if dist else None)

    one, z2, z3 = est(4), est(4, deepspeed="zero2"), est(4, deepspeed="zero3")
    assert z2.weights == one.weights and z2.gradients == one.gradients // 4 and z2.optimizer == one.optimizer // 4
    assert z3.weights == one.weights // 4 + one.block and z3.block > 0
    assert est(4, fsdp="full_shard").total == z3.total
    off = est(4, deepspeed="zero3_offload")
    assert off.optimizer == 0 and off.weights == one.block and off.offloaded > 0
    assert [shard(one, s, 4).total for s in SETTINGS] == sorted((shard(one, s, 4).total for s in SETTINGS),
                                                                reverse=True)
    for fits_from in SETTINGS:  # a device just big enough for `fits_from` is recommended exactly that
        one.available = int(shard(one, fits_from, 4).total / 0.9) + 1
        assert recommend(one).setting == fits_from
    one.available = 1
    assert recommend(one) is None and "nothing fits" in one.advice()
    one.available = int(shard(one, "zero3_offload", 4).total / 0.9) + 1
    assert "recommended: --deepspeed zero3_offload" in one.table()


def test_sequence_cuts_never_split_a_media_span():
    from tailorkit.distributed.ulysses import choose_cuts

    ids = torch.tensor([[1, 2, 3, 9, 7, 7, 7, 7, 7, 7, 8, 4, 5, 6, 1, 2]])  # 9 <start>, 7 placeholders, 8 <end>
    assert choose_cuts(ids, 2, set()) == [0, 8, 16]  # no media: the middle
    cuts = choose_cuts(ids, 2, {7, 8, 9})
    assert cuts in ([0, 3, 16], [0, 11, 16])  # before <start> or after <end>, never inside
    three = choose_cuts(ids, 3, {7, 8, 9})
    assert all(not (3 < c < 11) for c in three) and three == sorted(three) and len(three) == 4
    assert choose_cuts(torch.full((1, 6), 7), 2, {7}) in ([0, 0, 6], [0, 6, 6])  # one span: one shard holds it


def test_fsdp_settings_for_accelerate_on_gpus():
    from tailorkit.distributed.engines import fsdp_settings

    assert fsdp_settings(DistributedArgs(fsdp="full_shard")) == {
        "version": 2, "reshard_after_forward": True, "cpu_offload": False, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
    grad_op = fsdp_settings(DistributedArgs(fsdp="shard_grad_op offload",
                                            fsdp_config='{"transformer_layer_cls_to_wrap": ["Qwen2DecoderLayer"]}'))
    assert grad_op["reshard_after_forward"] is False and grad_op["cpu_offload"] is True
    assert grad_op["transformer_layer_cls_to_wrap"] == ["Qwen2DecoderLayer"]
    with pytest.raises(ConfigError, match="FSDP2 only"):
        fsdp_settings(DistributedArgs(fsdp="full_shard", fsdp_config='{"version": 1}'))
