"""Start-up: a training run imports only what it needs.

peft imports bitsandbytes whenever it is installed, which takes seconds (and prints CUDA kernel warnings on
a CPU machine) although only QLoRA, or a checkpoint saved quantized, uses it. A run that needs neither
makes it unimportable for its process before peft loads: peft and transformers then see it as absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def skip_unused_imports(cfg) -> None:
    """Before a training run's imports: leave bitsandbytes out unless the run quantizes (--quant_bits) or the model
    folder holds a quantized checkpoint."""
    if cfg.tuner.quant_bits is not None or _saved_quantized(cfg.model.model) or "bitsandbytes" in sys.modules:
        return
    sys.modules["bitsandbytes"] = None  # `import bitsandbytes` now raises ImportError, find_spec gives None


def _saved_quantized(model: str | None) -> bool:
    config = Path(model or "") / "config.json"
    if not config.is_file():
        return model is not None and not Path(model).exists()  # a hub id: its config is not known here
    try:
        return "quantization_config" in json.loads(config.read_text())
    except (OSError, ValueError):
        return True  # unreadable here: leave the decision to the loader
