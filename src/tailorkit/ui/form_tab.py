"""The tabs that start a job from a generated form: Train (sft/pt), RLHF, Evaluate, Export.

Each has the form of its verb's config, Start (settings checked by the config's own dataclasses and every
input path checked to exist, errors shown in the page), YAML export/import of the form, and for training
"Check data", which runs `tailorkit doctor` on the form's model and data and shows its report and histogram.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..errors import TailorkitError
from .forms import FormField, build, form_fields, read_yaml_text, settings_from_widgets, to_yaml, widgets_from_settings
from .jobs import Job, plan_job, start_job
from .paths import check_inputs
from .widgets import Form, error_text, escape, render_form

TRAIN_COMMON = ("model", "dataset", "val_dataset", "train_type", "vit", "aligner", "llm", "torch_dtype", "lora_rank",
                "lora_alpha", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                "gradient_accumulation_steps", "max_length", "logging_steps", "save_steps", "output_dir")
COMMON = {
    "sft": TRAIN_COMMON,
    "rlhf": ("rlhf_type", "beta", "loss_type", "ref_model") + TRAIN_COMMON,
    "eval": ("model", "ckpt_dir", "adapters", "eval_dataset", "eval_limit", "compare_base", "max_new_tokens",
             "eval_output_dir"),
    "export": ("model", "ckpt_dir", "adapters", "merge_lora", "quant_method", "quant_bits", "dataset", "output_dir"),
}


@dataclass
class Context:
    """What every handler of the page needs: the run root and the folder relative paths are read from."""

    root: Path
    cwd: Path


@dataclass
class JobTab:
    """A rendered job tab; ``page.py`` connects Start to the Runs tab."""

    verbs: tuple[str, ...]
    cls: type
    form: Form
    verb: gr.Radio | None
    start: gr.Button
    message: gr.Markdown


def job_tab(ctx: Context, verbs: tuple[str, ...], cls, prefix: str, doctor: bool = False) -> JobTab:
    """The form of ``cls`` with Start, YAML import/export and (training) Check data."""
    verb = gr.Radio(list(verbs), value=verbs[0], label="verb", elem_id=f"{prefix}-verb") if len(verbs) > 1 else None
    form = render_form(form_fields(cls), COMMON[prefix if prefix in COMMON else verbs[0]], prefix)
    with gr.Row():
        start = gr.Button("Start", variant="primary", elem_id=f"{prefix}-start")
        check = gr.Button("Check data (doctor)", elem_id=f"{prefix}-check") if doctor else None
        export = gr.Button("Form to YAML", elem_id=f"{prefix}-to-yaml")
        load = gr.Button("YAML to form", elem_id=f"{prefix}-from-yaml")
    message = gr.Markdown(elem_id=f"{prefix}-message")
    with gr.Accordion("YAML of the form", open=False):
        yaml_box = gr.Code(language="yaml", label="settings (edit, or upload a file, then 'YAML to form')",
                           elem_id=f"{prefix}-yaml", interactive=True)
        upload = gr.File(label="YAML file (e.g. a run's args.yaml)", file_types=[".yaml", ".yml"], type="filepath")
        download = gr.File(label="the form as a file", interactive=False)
    fields = form.fields
    export.click(lambda *v: form_yaml(ctx, fields, v), form.widgets, [yaml_box, download, message])
    upload.upload(lambda p: Path(p).read_text(encoding="utf-8") if p else "", upload, yaml_box)
    load.click(lambda text: yaml_to_form(fields, text), yaml_box, [*form.widgets, message])
    if check is not None:
        with gr.Accordion("data check", open=True, visible=False) as report_box:
            report = gr.Textbox(label="tailorkit doctor", lines=12, max_lines=40, elem_id=f"{prefix}-doctor")
            plot = gr.Image(label="encoded lengths", type="pil", interactive=False)
        check.click(lambda *v: check_data(ctx, cls, fields, v), form.widgets, [report, plot, report_box, message])
    return JobTab(verbs=verbs, cls=cls, form=form, verb=verb, start=start, message=message)


def start_from_form(ctx: Context, cls, fields: list[FormField], verb: str, values) -> Job:
    """Check the form's settings as the CLI would (``cls``'s dataclasses), check its input paths, start the job."""
    settings = settings_from_widgets(fields, list(values))
    problems = check_inputs(settings, ctx.cwd)
    if problems:
        raise TailorkitError("; ".join(problems))
    _, planned = plan_job(ctx.root, verb, settings)
    build(cls, planned)  # every check of the config dataclasses, before a process starts
    return start_job(ctx.root, verb, settings, ctx.cwd)


def form_yaml(ctx: Context, fields: list[FormField], values) -> tuple[str, str | None, str]:
    """(YAML text, a file of it for download, message)."""
    try:
        text = to_yaml(settings_from_widgets(fields, list(values)))
    except TailorkitError as e:
        return gr.skip(), None, error_text(e)
    folder = ctx.root / "uploads" / "forms"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"form-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
    path.write_text(text, encoding="utf-8")
    return text, str(path), f"settings written to {escape(str(path))}"


def yaml_to_form(fields: list[FormField], text: str) -> list:
    """Widget values from YAML text (flat, nested tutorial layout, or a run's args.yaml) and a message."""
    try:
        values = widgets_from_settings(fields, read_yaml_text(text or ""), source="YAML")
    except TailorkitError as e:
        return [gr.skip()] * len(fields) + [error_text(e)]
    return values + ["form filled from the YAML"]


def check_data(ctx: Context, cls, fields: list[FormField], values):
    """Run the doctor on the form's model and data: (report text, histogram, show the box, message)."""
    from ..doctor import DoctorConfig, check

    try:
        settings = settings_from_widgets(fields, list(values))
        problems = check_inputs({k: v for k, v in settings.items() if k in ("model", "dataset", "val_dataset")},
                                ctx.cwd)
        if problems:
            raise TailorkitError("; ".join(problems))
        known = {f.name for f in form_fields(DoctorConfig)}
        plot = ctx.root / "uploads" / "doctor" / time.strftime("%Y%m%d-%H%M%S") / "lengths.png"
        cfg = build(DoctorConfig, {**{k: v for k, v in settings.items() if k in known}, "doctor_plot": str(plot)})
        report = check(cfg)
    except Exception as e:  # shown in the page: a missing model folder, an unreadable file ...
        return "", None, gr.update(visible=False), error_text(e)
    image = _image(report.plot)
    verdict = "data OK: training would go through" if report.ok else "the data would stop training: see the report"
    return report.text, image, gr.update(visible=True), verdict


def _image(path: Path | None):
    if path is None:
        return None
    from PIL import Image

    with Image.open(path) as im:
        return im.copy()
