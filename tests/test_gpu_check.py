"""The CPU half of the GPU check: scripts/gpu_check.sh says it has no GPU and exits 0; bench/gpu_bench.py's logic
runs in --smoke mode (tiny shapes on the CPU, every case, one through the child-process path); the report's
table is built from a junit file and the bench's JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_bench  # noqa: E402
import gpu_report  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-GPU answer")
def test_gpu_check_without_a_gpu_says_so_and_exits_0(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "gpu_check: no CUDA GPU visible: nothing to run here" in proc.stdout
    assert not (tmp_path / "out").exists()  # it did not go on to install or run anything


@pytest.mark.slow
def test_gpu_bench_smoke_runs_every_case_on_tiny_shapes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert gpu_bench.main(["--smoke", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    results = {r["case"]: r for r in data["results"]}
    assert list(results) == [c.name for c in gpu_bench.CASES]
    for case in gpu_bench.CASES:
        r = results[case.name]
        if case.liger:
            assert r["skipped"] == "Liger's kernels need CUDA" and r["tokens_per_s"] is None
            continue
        assert r["error"] is None and r["tokens_per_s"] > 0 and r["steps"] >= 3 and r["mfu"] is None
    assert results["vl3b-full-padded"]["padding"] > 0.2 and results["vl3b-full-packed"]["padding"] == 0
    assert results["vl3b-full-packed"]["tokens"] == results["vl3b-full-padded"]["tokens"]  # same samples
    text = capsys.readouterr().out
    assert "packed / padded tokens/s (full):" in text and "skipped: Liger's kernels need CUDA" in text
    child = gpu_bench.run_in_child(gpu_bench.CASES[1], smoke=True, timeout=300)
    assert child.error is None and child.tokens == results["vl3b-full-packed"]["tokens"]


def test_model_flops_count_matmuls_and_causal_attention_per_sample():
    padded = {"input_ids": torch.zeros(2, 4), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])}
    packed = {"input_ids": torch.zeros(1, 7), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3]])}
    assert gpu_bench.sample_lengths(padded) == gpu_bench.sample_lengths(packed) == [3, 4]
    flops = gpu_bench.model_flops([packed], params=10, layers=2, hidden=8, trained=True)
    assert flops == 6 * 10 * 7 + 6 * 2 * 8 * (3 * 3 + 4 * 4)
    assert gpu_bench.model_flops([padded], 10, 2, 8, trained=False) == 4 * 10 * 7 + 6 * 2 * 8 * 25


def test_report_table_from_junit_and_bench_json(tmp_path):
    (tmp_path / "versions.json").write_text(json.dumps({"date": "2026-11-29", "gpu": "NVIDIA H200", "cuda": "13.0",
                                                        "python": "3.12.3", "torch": "2.11.0"}))
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite><testcase classname="tests.train.test_x" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_y" name="test_b" time="0.1"><skipped message="needs deepspeed"/></testcase>'
        '<testcase classname="tests.test_y" name="test_c" time="2.0"><failure message="assert 1 == 2"/></testcase>'
        '</testsuite></testsuites>')
    results = [gpu_bench.Result("vl3b-full-padded", "qwen2.5-vl-3b", "full", "padded", False, 1000.0, 0.3, 60.0, 10),
               gpu_bench.Result("vl3b-full-packed", "qwen2.5-vl-3b", "full", "packed", False, 2500.0, 0.5, 58.0, 4),
               gpu_bench.Result("7b-qlora-b1-s2048-gc", "qwen2.5-7b", "qlora", "padded", False, 900.0, 0.2, 7.5, 4),
               gpu_bench.Result("vl3b-lora-packed", "qwen2.5-vl-3b", "lora", "packed", False, error="CUDA OOM")]
    (tmp_path / "bench.json").write_text(json.dumps({"device": "NVIDIA H200",
                                                     "results": [asdict(r) for r in results]}))
    text = gpu_report.report(tmp_path, seconds=412)
    assert text.startswith("GPU check 2026-11-29 on NVIDIA H200 (CUDA 13.0, Python 3.12.3), 412 s in all")
    assert "gpu-marked tests: 1 passed, 1 skipped, 1 failed" in text
    assert "tests/test_y.py::test_b  (needs deepspeed)" in text and "FAILED" in text
    assert "50.0%" in text and "failed: CUDA OOM" in text
    assert "packed / padded tokens/s (full): 2.50x; peak memory 0.97x" in text
    assert "peak 8.1 GB vs the tutorials' 9 GB" in text
