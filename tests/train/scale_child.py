"""Child process of test_scale.py: `tailorkit <argv>` through the CLI, then its own peak RSS and the heavy
modules it imported, as one JSON line."""

from __future__ import annotations

import json
import resource
import sys

from tailorkit.cli import main

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "gptqmodel", "deepspeed", "trl", "fastapi", "uvicorn",
         "gradio", "datasets")

if __name__ == "__main__":
    code = main(sys.argv[1:])
    print("RESULT " + json.dumps({"code": code, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                  "imported": [m for m in HEAVY if sys.modules.get(m) is not None]}))
