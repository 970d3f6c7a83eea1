"""Test-only driver, launched under torchrun: `python -m torch.distributed.run ... dist_child.py SPEC.json`.

SPEC holds {"out": folder, "runs": [{"name", "verb", "argv", "sequential", "probe", "kill_at_step"}, ...]}; the runs
train one after the other in the same process group (one launch, several comparisons). Per run, rank 0 writes
``<out>/<name>.json``: the parameter classes seen at train begin (DTensor under FSDP2), and with probe "logits"
the live model's logits on fixed token ids (every rank runs that forward: ZeRO-3 gathers the weights).
``kill_at_step`` N SIGKILLs every rank between the micro-batches of step N (a crash mid-step).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from tailorkit.cli import parse
from tailorkit.train.recipe import fit, prepare

PROBE_IDS = [[5, 17, 42, 99, 7, 300, 12, 64]]


class Record(TrainerCallback):
    def __init__(self, kill_at_step: int | None):
        self.kill_at_step = kill_at_step
        self.param_classes: dict[str, int] = {}
        self.batch_kinds: list[str] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for p in model.parameters():
            name = type(p.data).__name__ if type(p).__name__ == "Parameter" else type(p).__name__
            self.param_classes[name] = self.param_classes.get(name, 0) + 1

    def on_substep_end(self, args, state, control, **kwargs):
        if self.kill_at_step is not None and state.global_step + 1 == self.kill_at_step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def logits(model) -> list:
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(PROBE_IDS), use_cache=False)
    return out.logits.float().tolist()


def main(spec_file: str) -> int:
    spec = json.loads(Path(spec_file).read_text())
    out = Path(spec["out"])
    for item in spec["runs"]:
        record = Record(item.get("kill_at_step"))
        run = prepare(parse(item.get("verb", "sft"), item["argv"]), item.get("verb", "sft"), callbacks=[record])
        if item.get("sequential"):  # rank r gets rows r, r + world, ...: rank 0 the images, rank 1 the text rows
            run.trainer.args.train_sampling_strategy = "sequential"
        result = fit(run)
        report = {"param_classes": record.param_classes, "world_size": run.trainer.args.world_size}
        sp = getattr(run.algorithm, "sequence_parallel", None)
        if sp is not None and sp.last is not None:
            report["sequence_cuts"] = sp.last.cuts
        if item.get("probe") == "logits":
            report["logits"] = logits(result.model)
        if run.trainer.args.process_index == 0:
            (out / f"{item['name']}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
