"""Two CPU processes (torchrun, gloo): KTO's KL estimate is global, and the DDP trap of pairwise losses.

The trap (a tutorial's "Expected to mark a variable ready only once"): reentrant gradient checkpointing and
chosen/rejected in separate forward passes make each checkpointed segment run its own backward, so DDP sees a
LoRA parameter's gradient twice. With a trained aligner DDP raises; with a frozen one it stays silent and the
processes' weights drift apart. Our defaults (non-reentrant checkpointing, one forward for both) never hit it;
forcing reentrant checkpointing alone runs DDP on a static graph, which is safe; forcing it together with
--ddp_find_unused_parameters true stops the run with an error that names the fixes. One torchrun launch runs every
scenario (tests/train/ddp_child.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import free_port

from tailorkit.distributed.engines import READY_TWICE_HINT

HERE = Path(__file__).parent


def _colour_pairs(folder: Path) -> str:
    from PIL import Image

    names = ["red", "green", "blue"]
    for name, rgb in zip(names, [(220, 30, 30), (30, 200, 30), (30, 30, 220)]):
        Image.new("RGB", (56, 56), rgb).save(folder / f"{name}.png")
    rows = [{"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                          {"role": "assistant", "content": names[i % 3]}],
             "rejected_response": names[(i + 1) % 3], "images": [f"{names[i % 3]}.png"]} for i in range(8)]
    (folder / "pref.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(folder / "pref.jsonl")


@pytest.fixture(scope="module")
def ranks(tiny_vl_dir, tmp_path_factory):
    """What each of the two ranks of one torchrun launch of ddp_child.py saw."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = _colour_pairs(tmp)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(HERE / "ddp_child.py"), str(tiny_vl_dir), data, str(tmp)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return [json.loads((tmp / f"rank{r}.jsonl").read_text()) for r in range(2)], tmp


@pytest.mark.slow
def test_kto_kl_over_two_processes_equals_one_process(ranks):
    from ddp_child import kto_kl

    results, _ = ranks
    single = kto_kl(slice(0, 4))  # one process, the whole batch
    assert [r["kto_kl_world"] for r in results] == [2, 2]
    assert results[0]["kto_kl"] == pytest.approx(single, abs=1e-6)
    assert results[1]["kto_kl"] == pytest.approx(single, abs=1e-6)
    halves = [kto_kl(slice(0, 2)), kto_kl(slice(2, 4))]  # what each process would estimate on its own
    assert all(abs(h - single) > 1e-2 for h in halves), (halves, single)


@pytest.mark.slow
def test_ddp_trap_is_reproduced_under_forced_settings_and_names_the_fix(ranks):
    results, _ = ranks
    for r in results:
        raised = r["aligner_lora_forced"]
        assert "Expected to mark a variable ready only once" in raised["cause"]  # DDP's own error, as in the tutorial
        assert raised["error"] == READY_TWICE_HINT
        assert "--concatenated_forward true" in raised["error"] and '"use_reentrant": false' in raised["error"]
        assert r["frozen_aligner_forced"]["error"] == READY_TWICE_HINT
        caught = r["frozen_aligner_plain_ddp"]  # without a static graph DDP says nothing here; our guard stops the run
        assert caught["cause"] == "" and caught["error"].startswith(READY_TWICE_HINT)
    silent = [r["frozen_aligner_plain_ddp_unguarded"] for r in results]
    assert all(s["error"] is None for s in silent)
    assert silent[0]["lora_checksum"] != silent[1]["lora_checksum"]  # without the guard the ranks diverge


@pytest.mark.slow
def test_forced_reentrant_checkpointing_alone_runs_on_a_static_graph_in_step(ranks):
    results, _ = ranks
    static = [r["static_graph"] for r in results]
    assert all(s["error"] is None for s in static), static
    assert static[0]["lora_checksum"] == static[1]["lora_checksum"]  # the double use is reduced on every rank


@pytest.mark.slow
def test_defaults_never_hit_the_trap(ranks):
    results, tmp = ranks
    defaults = [r["defaults"] for r in results]
    assert all(d["error"] is None for d in defaults)
    assert defaults[0]["lora_checksum"] == defaults[1]["lora_checksum"]  # gradients synchronised: same weights
    assert [r["cli_defaults_exit"] for r in results] == [0, 0]
    logs = [json.loads(line) for line in (tmp / "e" / "logging.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2]
    assert (tmp / "e" / "checkpoint-final" / "adapter_model.safetensors").is_file()
    assert (tmp / "e" / "checkpoint-final" / "args.yaml").is_file()
