"""The process of a run started from the page: the `tailorkit` CLI, and its exit status saved as it ends.

``python -m tailorkit.ui.child JOB_FOLDER VERB ARGS...`` runs ``tailorkit VERB ARGS...`` in this process
(so a SIGTERM reaches the trainer) and writes ``ui_exit.json`` into the job folder, which is how a web UI
started later tells a finished run from a failed one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..cli import main as cli_main
from ..run_files import UI_EXIT_FILE


def main(argv: list[str]) -> int:
    folder, rest = Path(argv[0]), argv[1:]
    code = 1  # an exception escaping the CLI (its traceback is in the log)
    try:
        code = cli_main(rest)
    except SystemExit as e:  # argparse's own exits (--help, a malformed flag)
        code = e.code if isinstance(e.code, int) else 1
        raise
    finally:
        (folder / UI_EXIT_FILE).write_text(json.dumps({"returncode": code, "ended": time.time()}))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
