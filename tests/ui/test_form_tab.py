"""The buttons of a form tab, called as the page calls them: Check data (the doctor's report and histogram),
Form to YAML and YAML to form."""

from __future__ import annotations

import yaml

from helpers import write_jsonl
from tailorkit.config.train import SftConfig
from tailorkit.demo.shapes import write_split
from tailorkit.ui.form_tab import Context, check_data, form_yaml, yaml_to_form
from tailorkit.ui.forms import form_fields, settings_from_widgets, widgets_from_settings


def test_check_data_shows_the_doctors_report_and_histogram(tiny_vl_dir, tmp_path):
    data = write_split(tmp_path / "data", "train", 4, seed=0)
    ctx, fields = Context(root=tmp_path / "runs", cwd=tmp_path), form_fields(SftConfig)
    values = widgets_from_settings(fields, {"model": str(tiny_vl_dir), "dataset": [str(data)], "max_length": 64})
    text, image, box, verdict = check_data(ctx, SftConfig, fields, values)
    assert "rows: 4 parsed, 4 encoded, 0 with errors" in text and verdict.startswith("data OK")
    assert image is not None and image.size[0] > 100 and box["visible"] is True

    broken = write_jsonl(tmp_path / "data" / "broken.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    values = widgets_from_settings(fields, {"model": str(tiny_vl_dir), "dataset": [str(broken)]})
    text, _, _, verdict = check_data(ctx, SftConfig, fields, values)
    assert "broken.jsonl:1" in text and "would stop training" in verdict

    values = widgets_from_settings(fields, {"model": str(tmp_path / "no-model"), "dataset": [str(data)]})
    text, image, box, verdict = check_data(ctx, SftConfig, fields, values)
    assert "no-model" in verdict and "does not exist" in verdict and box["visible"] is False


def test_the_form_goes_to_yaml_and_back(tmp_path):
    ctx, fields = Context(root=tmp_path / "runs", cwd=tmp_path), form_fields(SftConfig)
    settings = {"model": "org/model", "dataset": ["a.jsonl", "b c.jsonl"], "lora_rank": 4, "freeze_vit": False}
    text, path, message = form_yaml(ctx, fields, widgets_from_settings(fields, settings))
    assert yaml.safe_load(text) == settings and open(path).read() == text
    assert str(tmp_path / "runs" / "uploads") in path
    *values, message = yaml_to_form(fields, text)
    assert settings_from_widgets(fields, values) == settings and "filled" in message
    *_, message = yaml_to_form(fields, "lora_rnak: 4\n")
    assert "lora\\_rnak" in message and "error" in message
