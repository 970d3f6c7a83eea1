"""The web UI (`tailorkit web-ui`) and the chat page (`tailorkit app`), on gradio.

forms.py turns config dataclasses into widget values and back (no gradio), paths.py checks input paths,
jobs.py starts runs as CLI processes and finds them again from their files, metrics.py reads what the Runs
tab shows, chat.py streams replies from the infer engine; widgets.py, form_tab.py, runs_tab.py, chat_tab.py
and page.py build the pages; server.py launches them safely; child.py is the process a run runs in.
"""
