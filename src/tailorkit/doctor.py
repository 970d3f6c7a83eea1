"""`tailorkit doctor`: read the model's config and processor and every data row, change nothing, and report.

It reports rows by layout, media decoded, placeholder/media mismatches, encoded lengths after media
expansion (histogram printed and saved as PNG), what the truncation strategy will do, every broken row
as ``file:line: field: problem (fix)``, and the estimated peak memory per device. Weights are never read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config.fields import arg
from .config.train import SftConfig
from .data.validate import DataCheck, check_data, save_histogram, text_histogram
from .errors import DataError
from .distributed.launch import planned_world_size
from .train.memory import MemoryEstimate, estimate_memory


@dataclass
class DoctorArgs:
    doctor_plot: str | None = arg(None, "where the PNG histogram of encoded lengths goes "
                                 "(default: <output_dir>/doctor/lengths.png)")
    doctor_max_errors: int = arg(50, "most broken rows listed in the report")


@dataclass
class DoctorConfig(SftConfig):
    """The settings `tailorkit sft` takes (checked the same way), plus where the doctor's plot goes."""

    doctor: DoctorArgs = field(default_factory=DoctorArgs)


@dataclass
class DoctorReport:
    data: DataCheck
    memory: MemoryEstimate
    plot: Path | None
    text: str

    @property
    def ok(self) -> bool:
        stops = self.data.outcome.get("stop training (truncation_strategy raise)", 0)
        return not self.data.errors and not stops


def doctor(cfg: DoctorConfig) -> DoctorReport:
    """Check everything `sft` would use; prints the report and raises DataError when training would fail."""
    report = check(cfg)
    print(report.text)
    if not report.ok:
        data = report.data
        raise DataError(f"doctor found {len(data.errors)} broken rows and "
                        f"{data.outcome.get('stop training (truncation_strategy raise)', 0)} rows over max_length "
                        "that would stop training; see the report above")
    return report


def check(cfg: DoctorConfig) -> DoctorReport:
    """The doctor's report (``ok`` says whether training would go through), printed by ``doctor``; the web UI
    shows it in the page."""
    from .data.tools import apply_agent_template
    from .models.load import chat_template_for, load_processor, model_config, resolve_dtype, resolve_family
    from .models.media_budget import apply_media_budget
    from .plugins import load_plugins

    m = cfg.model
    config = model_config(m)
    family = resolve_family(config, m.model_type, m.trust_remote_code)
    processor = load_processor(m.model, m.trust_remote_code, chat_template_for(m, family), family)
    budget = apply_media_budget(processor, m)
    apply_agent_template(processor, m.agent_template)
    data = check_data(cfg.data.dataset + cfg.data.val_dataset, processor, max_length=cfg.data.max_length,
                      truncation=cfg.data.truncation_strategy, system=cfg.data.system,
                      preprocess=load_plugins(m.external_plugins).preprocess)
    seq_len = min(max(data.lengths, default=1), cfg.data.max_length)
    world = planned_world_size()
    memory = estimate_memory(config, family, cfg.tuner, cfg.train, dtype=resolve_dtype(m.torch_dtype), dist=cfg.dist,
                             seq_len=seq_len, media_tokens=data.max_media_tokens, world_size=world)
    plot = None
    if data.lengths:
        plot = save_histogram(data.lengths, cfg.doctor.doctor_plot or Path(cfg.train.output_dir, "doctor",
                                                                           "lengths.png"),
                              max_length=cfg.data.max_length)
    text = _render(cfg, family.name, budget, data, memory, plot, seq_len)
    return DoctorReport(data=data, memory=memory, plot=plot, text=text)


def _render(cfg: DoctorConfig, family: str, budget: dict, data: DataCheck, memory: MemoryEstimate,
            plot: Path | None, seq_len: int) -> str:
    d = cfg.data
    out = [f"tailorkit doctor: model {cfg.model.model} (family {family}); datasets "
           f"{', '.join(d.dataset + d.val_dataset)}"]
    if budget:
        out.append(f"media budget: {budget}")
    out.append(f"\nrows: {data.rows} parsed, {len(data.lengths)} encoded, {len(data.errors)} with errors; by layout: "
               + (", ".join(f"{k} {v}" for k, v in sorted(data.rows_by_layout.items())) or "none"))
    decoded = ", ".join(f"{v} {k}s" for k, v in data.media_decoded.items() if v) or "none"
    out.append(f"media: {data.rows_with_media} rows with media; opened and decoded: {decoded}; "
               "placeholders match media in every encoded row (mismatches are listed as errors)")
    if data.lengths:
        where = f" at {data.longest[1]}" if data.longest else ""
        out.append(f"\nencoded length after media expansion: max {max(data.lengths)}{where}, "
                   f"mean {sum(data.lengths) / len(data.lengths):.1f}; max_length {d.max_length}")
        out.append(text_histogram(data.lengths, max_length=d.max_length))
        out.append(f"histogram saved to {plot}")
    outcome = ", ".join(f"{v} {k}" for k, v in data.outcome.items())
    out.append(f"{data.too_long} rows exceed max_length; truncation_strategy {d.truncation_strategy}"
               + (f": {outcome}" if outcome else ""))
    if data.errors:
        limit = cfg.doctor.doctor_max_errors
        out.append(f"\nrows with errors ({len(data.errors)}):")
        ordered = sorted(data.errors, key=lambda e: (e.source or "", e.line if e.line is not None else -1))
        out += [f"  {e}" for e in ordered[:limit]]
        if len(data.errors) > limit:
            out.append(f"  ... and {len(data.errors) - limit} more")
    t = cfg.train
    out.append(f"\nestimated peak memory per device (train_type {cfg.tuner.train_type}, dtype "
               f"{cfg.model.torch_dtype}, batch {t.per_device_train_batch_size} x {seq_len} tokens, "
               f"gradient_checkpointing {t.gradient_checkpointing}, deepspeed {cfg.dist.deepspeed or 'off'}):")
    out.append(memory.table())
    return "\n".join(out)
