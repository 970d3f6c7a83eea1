"""`tailorkit export`: merge adapters, quantize, verify the written folder against the model in memory, upload.

Everything that can fail cheaply (output folder, hub access, quantizer installed, rows readable) is checked
before weights load. The export is written into a staging folder next to --output_dir and renamed into place
only once it has been reloaded from disk and verified, so --output_dir never holds an unproven export.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..config.export import ExportConfig
from ..errors import ConfigError, ModelError
from ..models.load import load_family_processor
from .hub import check_hub, push
from .merge import merge_adapters, write_model
from .quantize import check_layer_sizes, check_quantizer, full_precision_modules, quantize_folder
from .source import Source, head_kind, load_source, resolve_source
from .verify import (Rows, batch_of, encode_rows, max_abs_diff, mean_nll, merge_tolerance, read_rows, reload,
                     row_outputs)

REPORT_FILE = "export_report.json"


class VerificationFailed(ModelError):
    """The written export does not match the model in memory; it is kept in the staging folder for inspection."""


@dataclass
class ExportResult:
    output_dir: Path
    report: dict
    hub_url: str | None = None


def export(cfg: ExportConfig) -> ExportResult:
    """Merge and/or quantize, then prove the export by reloading it; fails with the numbers otherwise."""
    e = cfg.export
    out = Path(e.output_dir)
    check_output_dir(out)
    token = check_hub(cfg.hub)
    spec = resolve_source(cfg)
    if e.quant_method:
        check_quantizer(e.quant_method)
        if head_kind(spec.run_config) == "reward":
            raise ConfigError("quantized reward models are not exported in this version (the quantized export is "
                              "verified by its NLL, which a value head has none of); export it merged only")
    processor, family = load_family_processor(spec.processor_dir, spec.model)
    check, calib, origin = read_rows(e.dataset, family.is_multimodal, n_check=e.verify_n_samples,
                                     n_calibration=e.quant_n_samples, calibrate=e.quant_method in ("gptq", "awq"))
    rows = encode_rows(check, calib, origin, processor, e.max_length)
    started = time.time()
    source = load_source(spec, processor)
    check_layer_sizes(source.model, source.family, e.quant_method, e.group_size)
    for note in source.notes:
        print(f"[tailorkit] {note}")
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    try:
        report = _export_into(cfg, source, rows, staging)
    except VerificationFailed:
        raise
    except BaseException:
        _remove(staging, staging.parent / f"{staging.name}-merged")  # nothing unproven is left behind
        raise
    report["seconds"] = round(time.time() - started, 2)
    _publish(staging, out, report)
    _print_summary(out, report)
    url = push(out, cfg.hub, token) if token else None
    if url:
        print(f"[tailorkit] uploaded to {url}")
    return ExportResult(out, report, url)


def check_output_dir(out: Path) -> None:
    """Never write into a folder that holds anything (a previous export, a checkpoint, the base model)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output_dir {out} is not empty; exports are written into a new or empty folder "
                          "(choose another --output_dir or remove its contents)")


def _export_into(cfg: ExportConfig, source: Source, rows: Rows, staging: Path) -> dict:
    """Write, reload and verify; returns the report (also written into ``staging`` when verification fails)."""
    e = cfg.export
    pad = source.processor.tokenizer.pad_token_id if hasattr(source.processor, "tokenizer") else \
        source.processor.pad_token_id
    dtype = source.dtype
    reference = row_outputs(source.model, rows.check, pad)
    report = _report_header(cfg, source, rows)
    merged_dir = staging.parent / f"{staging.name}-merged" if e.quant_method else staging
    write_model(merge_adapters(source.model), source.processor, merged_dir)
    source.model = None  # the merged weights now live on disk; free them before reloading
    gc.collect()
    report["merge"] = _check_merge(merged_dir, source.auto_class, dtype, reference, rows, pad,
                                   head_kind(source.spec.run_config))
    if report["merge"]["max_abs_logit_diff"] > report["merge"]["tolerance"]:
        _fail(staging, report, f"the merged model written to {merged_dir} differs from base + adapter: max "
              f"|delta logit| {report['merge']['max_abs_logit_diff']:.3g} > tolerance "
              f"{report['merge']['tolerance']:.3g} on {len(rows.check)} rows")
    if e.quant_method:
        report["quantization"] = _quantize_and_check(cfg, source, rows, merged_dir, staging, reference, pad)
        shutil.rmtree(merged_dir)
        q = report["quantization"]
        if not q["nll_increase"] <= e.max_nll_increase:  # also catches a NaN NLL
            _fail(staging, report, f"the {e.quant_method} export scores a mean NLL of {q['nll_export']:.4f} on "
                  f"the held-out rows against {q['nll_reference']:.4f} unquantized (+{q['nll_increase']:.4f} > "
                  f"--max_nll_increase {e.max_nll_increase})")
    return report


def _report_header(cfg: ExportConfig, source: Source, rows: Rows) -> dict:
    e = cfg.export
    return {"model": source.spec.model.model, "adapters": source.spec.adapters, "ckpt_dir": cfg.source.ckpt_dir,
            "head": head_kind(source.spec.run_config), "family": source.family.name, "auto_class": source.auto_class,
            "dtype": str(source.dtype).replace("torch.", ""), "quant_method": e.quant_method,
            "quant_bits": e.quant_bits if e.quant_method else None,
            "group_size": e.group_size if e.quant_method in ("gptq", "awq", "fp8") else None,
            "full_precision_modules": full_precision_modules(source.family) if e.quant_method else [],
            "rows": rows.origin, "notes": source.notes}


def _check_merge(folder: Path, auto_class: str, dtype, reference: list, rows: Rows, pad: int, head: str) -> dict:
    """Reload the written (unquantized) model and compare its logits (a reward model's values) with base +
    adapter's."""
    reloaded = reload(folder, auto_class, dtype=dtype, head=head)
    diff = max_abs_diff(reference, row_outputs(reloaded, rows.check, pad))
    del reloaded
    gc.collect()
    return {"max_abs_logit_diff": diff, "tolerance": merge_tolerance(dtype, reference), "rows": len(rows.check)}


def _quantize_and_check(cfg: ExportConfig, source: Source, rows: Rows, merged_dir: Path, staging: Path,
                        reference: list, pad: int) -> dict:
    """Quantize the verified merged folder into ``staging``, reload it and score it against the reference."""
    e = cfg.export
    if e.quant_method in ("gptq", "awq") and not rows.calibration:
        raise ModelError("no calibration row is left after encoding; give more --dataset rows")
    calibration = [batch_of(r, pad, "cpu") for r in rows.calibration]
    info = quantize_folder(e.quant_method, merged_dir, staging, family=source.family, auto_class=source.auto_class,
                           bits=e.quant_bits, group_size=e.group_size, calibration=calibration,
                           processor=source.processor)
    quantized = reload(staging, source.auto_class)
    outputs = row_outputs(quantized, rows.check, pad)
    del quantized
    gc.collect()
    nll_ref, nll_q = mean_nll(reference, rows.check), mean_nll(outputs, rows.check)
    info["calibration_rows_with_media"] = sum(1 for r in rows.calibration if r.media)
    return {**info, "nll_reference": nll_ref, "nll_export": nll_q, "nll_increase": nll_q - nll_ref,
            "max_abs_logit_diff": max_abs_diff(reference, outputs), "rows": len(rows.check),
            "size_bytes": weights_size(staging), "size_bytes_unquantized": weights_size(merged_dir)}


def weights_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _fail(staging: Path, report: dict, message: str) -> None:
    staging.mkdir(parents=True, exist_ok=True)
    (staging / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    raise VerificationFailed(f"export verification failed: {message}. Nothing was written to --output_dir; the unverified "
                     f"export and {REPORT_FILE} are in {staging} for inspection")


def _remove(*folders: Path) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _publish(staging: Path, out: Path, report: dict) -> None:
    """The report goes in last; the verified folder then takes the place of the (empty or absent) output_dir."""
    report["size_bytes"] = weights_size(staging)
    (staging / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    if out.exists():
        out.rmdir()  # checked empty before any work
    staging.rename(out)


def _print_summary(out: Path, report: dict) -> None:
    m = report["merge"]
    print(f"[tailorkit] export written to {out} ({report['size_bytes'] / 2**20:.1f} MiB of weights, "
          f"{report['seconds']:.1f}s)")
    print(f"[tailorkit] verified: reloaded with {report['auto_class']}.from_pretrained; merged vs base + adapter on "
          f"{m['rows']} rows ({report['rows']}): max |delta logit| {m['max_abs_logit_diff']:.3g} "
          f"(tolerance {m['tolerance']:.3g})")
    if q := report.get("quantization"):
        print(f"[tailorkit] {report['quant_method']} {report['quant_bits']}-bit: mean NLL per supervised token "
              f"{q['nll_export']:.4f} vs {q['nll_reference']:.4f} unquantized ({q['nll_increase']:+.4f}), max "
              f"|delta logit| {q['max_abs_logit_diff']:.3g}")
    print(f"[tailorkit] report: {out / REPORT_FILE}")
