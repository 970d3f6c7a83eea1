"""scripts/gpu_check.sh's report: the versions it ran with, then one table of the gpu-marked tests and the bench.

    python scripts/gpu_report.py --versions OUT/versions.json      # record (and print) the versions
    python scripts/gpu_report.py --results OUT [--seconds N]        # the table from OUT/{versions.json,
                                                                    #   tests.xml, bench.json}
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "accelerate", "triton", "liger-kernel", "bitsandbytes", "deepspeed",
            "flash-attn", "vllm")


def versions() -> dict:
    """Python, the GPU, and the version of every package that decides what the GPU half can run."""
    import platform

    import torch

    out = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
           "cuda": torch.version.cuda}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def test_rows(xml_path: Path) -> list[tuple[str, str, str]]:
    """(outcome, seconds, test id with the reason of a skip or failure) per test case of a junit file."""
    rows = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        outcome, reason = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                reason = (found.get("message") or "").splitlines()[0][:100] if found.get("message") else ""
        rows.append((outcome, f"{float(case.get('time', 0)):.1f}", test_id + (f"  ({reason})" if reason else "")))
    return rows


def report(results: Path, seconds: int | None) -> str:
    v = json.loads((results / "versions.json").read_text()) if (results / "versions.json").is_file() else {}
    lines = [f"GPU check {v.get('date', '?')} on {v.get('gpu', '?')} (CUDA {v.get('cuda', '?')}, Python "
             f"{v.get('python', '?')})" + (f", {seconds} s in all" if seconds is not None else ""),
             "versions: " + ", ".join(f"{k} {v[k]}" for k in PACKAGES if k in v), ""]
    xml = results / "tests.xml"
    if xml.is_file():
        rows = test_rows(xml)
        counts = {o: sum(1 for r in rows if r[0] == o) for o in ("passed", "skipped", "FAILED", "ERROR")}
        lines += ["gpu-marked tests: " + ", ".join(f"{n} {o.lower()}" for o, n in counts.items() if n),
                  f"{'result':<8} {'s':>6}  test"]
        lines += [f"{o:<8} {s:>6}  {t}" for o, s, t in rows]
    else:
        lines.append("gpu-marked tests: no tests.xml (stopped by the time limit? see tests.log)")
    lines.append("")
    bench = results / "bench.json"
    if bench.is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
        from gpu_bench import Result, table

        data = json.loads(bench.read_text())
        lines.append(table([Result(**r) for r in data["results"]], data["device"]))
    else:
        lines.append("bench: no bench.json (see bench.log)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", help="write the versions here (JSON) and print them")
    ap.add_argument("--results", help="folder of versions.json, tests.xml and bench.json: print the table")
    ap.add_argument("--seconds", type=int, help="wall time of the whole check, for the heading")
    a = ap.parse_args(argv)
    if a.versions:
        v = versions()
        Path(a.versions).write_text(json.dumps(v, indent=2))
        print("gpu_check versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    if a.results:
        print(report(Path(a.results), a.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
