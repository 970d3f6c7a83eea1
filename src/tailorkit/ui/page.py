"""The pages: `tailorkit web-ui` (Train, RLHF, Runs, Chat, Evaluate, Export) and `tailorkit app` (chat only)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..config.eval import EvalConfig
from ..config.export import ExportConfig
from ..config.rlhf import RLHF_TYPES, ONLINE_TYPES, RlhfConfig
from ..config.train import SftConfig
from .chat import ChatModel
from .chat_tab import chat_panel
from .form_tab import Context, JobTab, job_tab, start_from_form
from .runs_tab import RunsTab, refresh, runs_tab
from .widgets import error_text, escape

TITLE = "tailorkit"
PREFERENCE_TYPES = tuple(t for t in RLHF_TYPES if t not in (*ONLINE_TYPES, "gkd"))
# the rlhf form's advanced sections and the algorithms that read them (config/rlhf.py's concerns)
ALGORITHM_SECTIONS = {"preference": PREFERENCE_TYPES, "grpo": ("grpo", "ppo", "gkd"), "ppo": ("ppo",), "gkd": ("gkd",)}
HELP = ("Every field is a `tailorkit` argument (its CLI help under it); an empty box means its default. "
        "Start runs the CLI in a process of its own: closing this page or restarting the UI leaves it running.")


def build_web_ui(root: Path, cwd: Path) -> gr.Blocks:
    """The web UI's page over the run root ``root`` (relative paths in forms are read from ``cwd``)."""
    ctx = Context(root=root, cwd=cwd)
    chat = ChatModel()
    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        gr.Markdown(f"## {TITLE}\n{HELP}")
        with gr.Tabs(elem_id="tabs") as tabs:
            forms = []
            with gr.Tab("Train", id="train"):
                forms.append(job_tab(ctx, ("sft", "pt"), SftConfig, "sft", doctor=True))
            with gr.Tab("RLHF", id="rlhf"):
                rlhf = job_tab(ctx, ("rlhf",), RlhfConfig, "rlhf", doctor=True)
                forms.append(rlhf)
                _toggle_algorithm_sections(rlhf)
            with gr.Tab("Runs", id="runs"):
                runs = runs_tab(root)
            with gr.Tab("Chat", id="chat"):
                chat_panel(chat, cwd, root=root)
            with gr.Tab("Evaluate", id="eval"):
                gr.Markdown("Scores a model, adapter or checkpoint with `tailorkit eval`; the report shows in Runs.")
                forms.append(job_tab(ctx, ("eval",), EvalConfig, "eval"))
            with gr.Tab("Export", id="export"):
                gr.Markdown("Merges and/or quantizes with `tailorkit export`, verified before it counts; the report "
                            "shows in Runs.")
                forms.append(job_tab(ctx, ("export",), ExportConfig, "export"))
        for tab in forms:
            _connect_start(ctx, tab, tabs, runs)
        page.load(lambda: refresh(root, None), None, runs.outputs)
    return page


def _connect_start(ctx: Context, tab: JobTab, tabs: gr.Tabs, runs: RunsTab) -> None:
    """Start: on success the Runs tab opens on the new run; on an error the message says what to fix."""

    def start(*inputs):
        verb, values = (inputs[0], inputs[1:]) if tab.verb is not None else (tab.verbs[0], inputs)
        try:
            job = start_from_form(ctx, tab.cls, tab.form.fields, verb, values)
        except Exception as e:  # shown in the page: a bad setting, a missing path, an unwritable folder ...
            return [error_text(e), gr.skip()] + [gr.skip()] * len(runs.outputs)
        return [escape(f"started {job.name}"), gr.Tabs(selected="runs")] + refresh(ctx.root, job.name)

    verb = [tab.verb] if tab.verb is not None else []
    tab.start.click(start, verb + tab.form.widgets, [tab.message, tabs, *runs.outputs])


def algorithm_sections(kind: str) -> set[str]:
    """The rlhf form's advanced sections that the algorithm ``kind`` reads."""
    return {name for name, kinds in ALGORITHM_SECTIONS.items() if kind in kinds}


def _toggle_algorithm_sections(tab: JobTab) -> None:
    """Show the advanced sections the chosen algorithm reads; hide the others."""
    sections = tab.form.sections
    choice = tab.form.widget("rlhf_type")
    shown = [name for name in ALGORITHM_SECTIONS if name in sections]

    def show(kind):
        return [gr.update(visible=name in algorithm_sections(kind)) for name in shown]

    choice.change(show, choice, [sections[name] for name in shown])
    default = tab.form.fields[[f.name for f in tab.form.fields].index("rlhf_type")].default
    for name in shown:
        sections[name].visible = name in algorithm_sections(default)


def build_app(chat: ChatModel, values: dict) -> gr.Blocks:
    """`tailorkit app`'s page: the chat with the model ``chat`` holds; ``values`` prefill generation settings."""
    with gr.Blocks(title=f"{TITLE} chat", analytics_enabled=False) as page:
        gr.Markdown(f"## {TITLE} chat")
        chat_panel(chat, Path.cwd(), values=values, loaded=chat.description)
    return page
