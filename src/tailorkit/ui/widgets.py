"""Gradio widgets of a generated form: common fields up front, the rest in one "advanced" section per concern."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .forms import UNSET, FormField, to_widget

PER_ROW = 3


@dataclass
class Form:
    """A rendered form: ``widgets[i]`` shows ``fields[i]``; ``sections`` are the advanced accordions by concern."""

    fields: list[FormField]
    widgets: list
    sections: dict

    def widget(self, name: str):
        return self.widgets[[f.name for f in self.fields].index(name)]


def widget(ff: FormField, prefix: str, value=None):
    """The one widget of a field: checkbox, dropdown of its choices, or a text box (an empty box: the default)."""
    value = to_widget(ff, ff.default) if value is None else value
    common = dict(label=ff.name, info=ff.help, elem_id=f"{prefix}-{ff.name}", value=value)
    if ff.kind == "bool":
        return gr.Checkbox(**common)
    if ff.kind == "choice":
        choices = [("(default)" if c == UNSET else c, c) for c in ff.choices]
        return gr.Dropdown(choices=choices, **common)
    placeholder = "one per line" if ff.kind == "list" else ("JSON" if ff.kind == "json" else None)
    return gr.Textbox(lines=2 if ff.kind == "list" else 1, max_lines=8, placeholder=placeholder, **common)


def render_form(fields: list[FormField], common: tuple[str, ...], prefix: str, values: dict | None = None) -> Form:
    """Render ``fields``: those named in ``common`` (in that order) first, then an accordion per concern.

    ``values``: widget values to show instead of the defaults (by field name).
    """
    values = values or {}
    by_name = {f.name: f for f in fields}
    made: dict[str, object] = {}
    _grid([by_name[n] for n in common if n in by_name], prefix, values, made)
    sections = {}
    for concern in dict.fromkeys(f.concern for f in fields):
        rest = [f for f in fields if f.concern == concern and f.name not in made]
        if rest:
            with gr.Accordion(f"advanced: {concern}", open=False) as sections[concern]:
                _grid(rest, prefix, values, made)
    return Form(fields=fields, widgets=[made[f.name] for f in fields], sections=sections)


def _grid(fields: list[FormField], prefix: str, values: dict, made: dict) -> None:
    for start in range(0, len(fields), PER_ROW):
        with gr.Row():
            for ff in fields[start:start + PER_ROW]:
                made[ff.name] = widget(ff, prefix, values.get(ff.name))


def error_text(e: Exception | str) -> str:
    """Markdown of an error shown in the page."""
    return f"**error:** {escape(str(e))}"


def escape(text: str) -> str:
    """Text shown as itself in Markdown (underscores in setting names are not emphasis)."""
    return "".join("\\" + c if c in "\\`*_[]<>#|" else c for c in text)
