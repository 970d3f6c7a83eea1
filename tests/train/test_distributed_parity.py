"""Distributed = single process: 2 CPU processes (gloo) x batch b give the weights of 1 process x batch 2b.

One torchrun job trains every distributed variant one after the other (DDP LoRA / full, text / Qwen2.5-VL,
gradient accumulation 2; ZeRO-2; ZeRO-3; FSDP2 by hand); each is compared with the same samples per
optimizer step trained in this process. Dropout is off (each rank draws its own masks).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tailorkit.cli import parse
from tailorkit.demo.shapes import write_split
from tailorkit.train.sft import sft

from dist_helpers import TOLERANCE, final_weights, launch_runs, max_diff, run_report, zero3_config
from dist_child import PROBE_IDS
from helpers import text_chat_rows, write_jsonl


def train_args(model, data, out, train_type: str, per_device: int, *extra: str) -> list[str]:
    return ["--model", str(model), "--dataset", str(data), "--output_dir", str(out), "--train_type", train_type,
            "--torch_dtype", "float32", "--max_steps", "2", "--per_device_train_batch_size", str(per_device),
            "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant",
            "--lora_dropout", "0", "--save_strategy", "no", "--logging_steps", "1", "--max_length", "256",
            "--seed", "3", *extra]


ZERO3_JSON = "ds_zero3.json"  # a JSON config partitioning every parameter (written by the job fixture)
# name -> (model, train type, engine flags); every name is trained once distributed and compared with `reference`.
# DDP, ZeRO and FSDP runs take batch 1 per rank; sequence-parallel (sp_) ranks share each batch of 2.
CASES = {
    "sp_full_text": ("text", "full", ("--sequence_parallel_size", "2")),
    "sp_lora_vl": ("vl", "lora", ("--freeze_vit", "false", "--sequence_parallel_size", "2")),
    "ddp_lora_text": ("text", "lora", ()),
    "ddp_full_text": ("text", "full", ()),
    "ddp_lora_vl": ("vl", "lora", ("--freeze_vit", "false")),
    "ddp_full_vl": ("vl", "full", ()),
    "zero2_lora_text": ("text", "lora", ("--deepspeed", "zero2")),
    "zero2_full_text": ("text", "full", ("--deepspeed", "zero2")),
    "zero3_lora_text": ("text", "lora", ("--deepspeed", "zero3")),  # the preset
    "zero3_full_text": ("text", "full", ("--deepspeed", ZERO3_JSON)),
    "fsdp_full_text": ("text", "full", ("--fsdp", "full_shard")),
    # every tuner trains under ZeRO-2 and ZeRO-3: mixed per-component plans, QLoRA, shipped adapters (dummy)
    **{f"{z}_{name}": (m, tt, (*flags, "--deepspeed", ZERO3_JSON if z == "zero3" else z)) for z in ("zero2", "zero3")
       for name, (m, tt, flags) in {
        "mixed_vl": ("vl", "lora", ("--vit", "full", "--llm", "lora")),
        "qlora_text": ("text", "qlora", ("--quant_bits", "4")),
        "dummy_phi4": ("phi4", "dummy", ("--max_length", "1024")),
    }.items()},
}
ENGINE_FLAGS = ("--deepspeed", "--fsdp", "--sequence_parallel_size")


def tuner_flags(flags: tuple) -> tuple:
    """The flags of a case without its engine: what the one-process reference trains with."""
    out, skip = [], False
    for f in flags:
        if skip or f in ENGINE_FLAGS:
            skip = not skip
            continue
        out.append(f)
    return tuple(out)


@pytest.fixture(scope="module")
def job(tiny_text_dir, tiny_vl_dir, family_dirs, tmp_path_factory):
    """(root folder, models, datasets, torchrun's output) after the one distributed job."""
    root = tmp_path_factory.mktemp("parity")
    models = {"text": tiny_text_dir, "vl": tiny_vl_dir, "phi4": family_dirs("phi4_multimodal")}
    data = {"text": write_jsonl(root / "text.jsonl", text_chat_rows(16)),
            "vl": write_split(root / "shapes", "train", 8, seed=4)}
    data["phi4"] = data["vl"]
    zero3 = str(zero3_config(root))
    runs = [{"name": name, "argv": train_args(models[m], data[m], root / name, tt, 2 if name.startswith("sp_") else 1,
                                              *(zero3 if f == ZERO3_JSON else f for f in flags)),
             "probe": "logits" if name == "zero3_full_text" else None}
            for name, (m, tt, flags) in CASES.items()]
    proc = launch_runs(root, runs)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return root, models, data, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def reference(job):
    """One process, batch 2 per step and accumulation 2: the same 4 samples per optimizer step."""
    root, models, data, _ = job
    cache = {}

    def get(model: str, train_type: str, *extra: str) -> dict:
        key = (model, train_type, extra)
        if key not in cache:
            out = root / f"single-{model}-{train_type}{'-'.join(extra)}"
            sft(parse("sft", train_args(models[model], data[model], out, train_type, 2, *extra)))
            cache[key] = final_weights(out)
        return cache[key]

    return get


def assert_same_as_single_process(job, reference, name: str) -> None:
    root, models, _, _ = job
    model, train_type, flags = CASES[name]
    expected = reference(model, train_type, *tuner_flags(flags))
    got = final_weights(root / name)
    assert max_diff(got, expected) <= TOLERANCE, (name, max_diff(got, expected))
    if train_type == "full":  # the comparison is not vacuous: training moved the weights
        base = load_file(models[model] / "model.safetensors")
        assert max_diff({k: expected[k] for k in base}, base) > 10 * TOLERANCE
    if train_type == "dummy":
        shipped = {k.removeprefix("base_model.model."): v for k, v in
                   load_file(models[model] / "vision-lora" / "adapter_model.safetensors").items()}
        trained = {k.split("/", 1)[1]: v for k, v in got.items() if k.startswith("vision-lora/")}
        assert set(trained) == set(shipped) and any(not torch.equal(trained[k], shipped[k]) for k in shipped)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp_lora_text", "ddp_full_text", "ddp_lora_vl", "ddp_full_vl"])
def test_ddp_two_processes_equal_one_process_with_twice_the_batch(job, reference, name):
    assert_same_as_single_process(job, reference, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zero2_lora_text", "zero2_full_text", "zero3_lora_text", "zero3_full_text"])
def test_deepspeed_zero2_and_zero3_equal_ddp(job, reference, name):
    assert_same_as_single_process(job, reference, name)
    ddp = job[0] / f"ddp_{name.split('_', 1)[1]}"
    assert max_diff(final_weights(job[0] / name), final_weights(ddp)) <= TOLERANCE
    # trainable.json under ZeRO counts the gathered parameters, and maps each to its optimizer group's lr
    zero, plain = (json.loads((d / "trainable.json").read_text()) for d in (job[0] / name, ddp))
    assert zero["components"] == plain["components"] and zero["trainable"] == plain["trainable"] > 0
    assert [g["parameters"] for g in zero["param_groups"]] == [g["parameters"] for g in plain["param_groups"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CASES if n.split("_", 1)[1] in ("mixed_vl", "qlora_text", "dummy_phi4")])
def test_every_tuner_trains_under_zero2_and_zero3_as_in_one_process(job, reference, name):
    assert_same_as_single_process(job, reference, name)


@pytest.mark.slow
def test_zero3_consolidated_checkpoint_reloads_in_plain_transformers_with_the_live_logits(job):
    root = job[0]
    final = root / "zero3_full_text" / "checkpoint-final"
    assert not list(final.glob("global_step*")) and (final / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    with torch.no_grad():
        reloaded = model(input_ids=torch.tensor(PROBE_IDS)).logits
    live = torch.tensor(run_report(root, "zero3_full_text")["logits"])
    assert (reloaded - live).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_fsdp2_on_cpu_shards_parameters_as_dtensors_and_equals_ddp(job, reference):
    report = run_report(job[0], "fsdp_full_text")
    assert set(report["param_classes"]) == {"DTensor"}, report
    assert_same_as_single_process(job, reference, "fsdp_full_text")
    assert "engine fsdp2 full_shard" in job[3] and "fsdp2 on cpu: 2 blocks" in job[3]


@pytest.mark.slow
def test_one_start_line_from_rank_zero(job):
    output = job[3]
    line = ("[tailorkit] world size 2 (1 node), backend gloo, engine deepspeed zero3, batch 1 per device x 2 "
            "accumulation x 2 data-parallel ranks = 4 samples per optimizer step")
    assert output.count(line) == sum(1 for _, _, flags in CASES.values() if "zero3" in flags)  # rank 0 only
    assert output.count("engine deepspeed ds_zero3.json") == sum(1 for _, _, f in CASES.values() if ZERO3_JSON in f)
    assert output.count("[tailorkit] sft on qwen2:") == sum(1 for m, _, _ in CASES.values() if m == "text")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sp_full_text", "sp_lora_vl"])
def test_ulysses_sequence_parallel_on_two_ranks_equals_one_process(job, reference, name):
    assert_same_as_single_process(job, reference, name)
    cuts = run_report(job[0], name)["sequence_cuts"]  # the last batch really was split in two shards
    assert len(cuts) == 3 and 0 < cuts[1] < cuts[2]
    assert "engine ddp + ulysses sequence parallel 2, batch 2 per device x 2 accumulation x 1 data-parallel rank" \
        in job[3]
