"""The trainability manifest (printed and saved as trainable.json before step 1) and its check after a step."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..errors import TailorkitError
from ..models.family import COMPONENTS
from ..run_files import MANIFEST_FILE
from .optim import GROUP_NAME
from .plan import Plan



class TrainabilityError(TailorkitError, RuntimeError):
    """A parameter declared trainable did not change after an optimizer step, or a frozen one did."""


def build_manifest(model: torch.nn.Module, plan: Plan, optimizer) -> dict:
    """Component x mode table with trainable/total counts and the learning rates of their groups."""
    # The scheduler already applied its first factor (0 under warm-up); the manifest shows the peak lr.
    groups = optimizer_groups(optimizer)
    lr_of = {id(p): g.get("initial_lr", g["lr"]) for g, params in groups for p in params}
    rows = {c: {"component": c, "mode": plan.modes[c], "trainable": 0, "total": 0, "lr": set()} for c in COMPONENTS}
    for name, p in model.named_parameters():
        row = rows[plan.family.component_of(name)]
        row["total"] += numel(p)
        in_optimizer = id(p) in lr_of
        if p.requires_grad or (plan.modes[row["component"]] == "lisa" and in_optimizer):
            row["trainable"] += numel(p)
        if in_optimizer:
            row["lr"].add(lr_of[id(p)])
    table = [_with_overrides({**r, "lr": sorted(r["lr"])}) for r in rows.values() if r["total"]]
    group_rows = [{"name": g.get(GROUP_NAME, f"group{i}"), "lr": g.get("initial_lr", g["lr"]),
                   "weight_decay": g.get("weight_decay", 0.0),
                   "parameters": sum(numel(p) for p in params)} for i, (g, params) in enumerate(groups)]
    trainable = sum(r["trainable"] for r in table)
    total = sum(r["total"] for r in table)
    return {"train_type": plan.train_type, "adapter": plan.adapter, "components": table,
            "optimizer": _class_path(getattr(optimizer, "optimizer", optimizer)), "param_groups": group_rows,
            "trainable": trainable, "total": total, "full_modules_saved_with_adapter": plan.full_modules,
            "unused_arguments": {k: v for k, v in plan.unused.items()}, "notes": plan.notes}


def optimizer_groups(optimizer) -> list[tuple[dict, list]]:
    """(group settings, the model parameters it trains) per optimizer group. DeepSpeed's ZeRO optimizers
    replace each group's params with flat partitions and keep the model's parameters per group aside."""
    inner = optimizer
    while inner is not None:  # accelerate's and DeepSpeed's wrappers each hold the next as .optimizer
        members = getattr(inner, "bit16_groups", None) or getattr(inner, "fp16_groups", None)
        if members is not None and len(members) == len(optimizer.param_groups):
            return list(zip(optimizer.param_groups, members))
        inner = getattr(inner, "optimizer", None)
    return [(g, g["params"]) for g in optimizer.param_groups]


def _with_overrides(row: dict) -> dict:
    """Mode 'partial' where --freeze_parameters / --trainable_parameters / --modules_to_save changed the plan."""
    declared = row["mode"]
    if (declared == "frozen" and row["trainable"]) or (declared == "full" and row["trainable"] < row["total"]):
        row["mode"] = "partial"
    row["declared"] = declared
    return row


def numel(p: torch.Tensor) -> int:
    """Element count of the weight a parameter stands for (a 4-bit bitsandbytes weight is stored packed)."""
    state = getattr(p, "quant_state", None)
    if state is not None:
        return int(torch.Size(state.shape).numel())
    return int(getattr(p, "ds_numel", p.numel()))  # DeepSpeed ZeRO-3 keeps only a shard here


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """What this rank holds of a parameter or gradient: an FSDP2 DTensor's local shard, a ZeRO-3 partition
    (``ds_tensor``; the parameter itself is empty between uses), or the tensor itself."""
    if hasattr(t, "to_local"):
        return t.to_local()
    shard = getattr(t, "ds_tensor", None)
    return shard if shard is not None else t


def _class_path(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def format_manifest(manifest: dict) -> str:
    lines = [f"{'component':<10} {'mode':<10} {'trainable':>12} {'total':>12}  learning rate"]
    for r in manifest["components"]:
        lr = ", ".join(f"{x:.3g}" for x in r["lr"]) or "-"
        lines.append(f"{r['component']:<10} {r['mode']:<10} {r['trainable']:>12,} {r['total']:>12,}  {lr}")
    pct = 100 * manifest["trainable"] / max(manifest["total"], 1)
    lines.append(f"{'all':<10} {manifest['train_type']:<10} {manifest['trainable']:>12,} {manifest['total']:>12,}"
                 f"  ({pct:.2f}% trainable)")
    if manifest["unused_arguments"]:
        lines.append("unused with this plan: " + ", ".join(f"{k}={v}" for k, v in manifest["unused_arguments"].items()))
    lines += [f"note: {n}" for n in manifest["notes"]]
    return "\n".join(lines)


def fingerprint(t: torch.Tensor) -> torch.Tensor:
    """(sum, sum of squares) in float64, in chunks so that no full float64 copy is made."""
    flat = t.detach().reshape(-1)
    acc = torch.zeros(2, dtype=torch.float64, device=flat.device)
    for chunk in flat.split(1 << 24):
        c = chunk.to(torch.float64)
        acc += torch.stack([c.sum(), (c * c).sum()])
    return acc.cpu()


class TrainabilityCallback(TrainerCallback):
    """Prints/saves the manifest before step 1; after the first optimizer step checks what changed.

    A trainable parameter whose first step could not move it (no gradient because the batch did not reach
    it, an all-zero gradient as LoRA's A matrices have while B is zero, or a zero warm-up learning rate) is
    re-checked at the following steps and reported at the end if it never changed.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.before: dict[str, torch.Tensor] = {}
        self.pending: dict[str, str] = {}
        self.steps = 0
        self.manifest: dict | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.manifest = build_manifest(model, self.plan, optimizer)
        if state.is_world_process_zero:
            print("[tailorkit] trainability plan\n" + format_manifest(self.manifest))
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            Path(args.output_dir, MANIFEST_FILE).write_text(json.dumps(self.manifest, indent=2))
        # Sharded parameters (ZeRO-3, FSDP2) are compared by this rank's shard; a rank whose shard of a
        # parameter is empty leaves that parameter to the others.
        self.before = {n: fingerprint(local_shard(p)) for n, p in model.named_parameters()
                       if local_shard(p).numel() > 0}

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.steps += 1
        if self.steps == 1:
            self._first_check(model, optimizer)
        elif self.pending:
            self._recheck(model)

    def _first_check(self, model, optimizer) -> None:
        lr_of = {id(p): g["lr"] for g, params in optimizer_groups(optimizer) for p in params}
        moved_frozen, stuck = [], []
        for name, p in model.named_parameters():
            if name not in self.before:
                continue
            changed = not torch.equal(fingerprint(local_shard(p)), self.before[name])
            if not p.requires_grad:
                if changed:
                    moved_frozen.append(name)
            elif not changed:
                if id(p) not in lr_of:
                    stuck.append(f"{name} (not in any optimizer group)")
                elif p.grad is None:
                    # A batch may not reach it (text-only rows and a trained vision tower): wait for one that does.
                    self.pending[name] = "no gradient yet"
                elif lr_of[id(p)] == 0 or not local_shard(p.grad).any():
                    self.pending[name] = "zero learning rate" if lr_of[id(p)] == 0 else "all-zero gradient"
                else:
                    stuck.append(name)
        _raise_if(moved_frozen, stuck)
        self.before = {n: self.before[n] for n in self.pending}

    def _recheck(self, model) -> None:
        params = dict(model.named_parameters())
        for name in list(self.pending):
            if not torch.equal(fingerprint(local_shard(params[name])), self.before[name]):
                del self.pending[name]

    def on_train_end(self, args, state, control, **kwargs):
        if self.pending:
            print(f"[tailorkit] warning: {len(self.pending)} trainable parameters never changed during this run "
                  f"(e.g. {next(iter(self.pending.items()))}); train longer to confirm they learn")


def _raise_if(moved_frozen: list[str], stuck: list[str]) -> None:
    if not (moved_frozen or stuck):
        return
    parts = []
    if stuck:
        parts.append(f"{len(stuck)} parameters declared trainable did not change: {', '.join(stuck[:10])}")
    if moved_frozen:
        parts.append(f"{len(moved_frozen)} frozen parameters changed: {', '.join(moved_frozen[:10])}")
    raise TrainabilityError("trainability check after the first optimizer step failed; " + "; ".join(parts))
