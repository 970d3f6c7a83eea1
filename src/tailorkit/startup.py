"""Start-up: a training run imports only what it needs.

Libraries import optional packages whenever they are installed: peft imports bitsandbytes (seconds, and
CUDA kernel warnings on a CPU machine) although only QLoRA, or a checkpoint saved quantized, uses it; the
transformers Trainer imports `datasets` (with pandas and pyarrow: over 100 MiB) although tailorkit reads
data files itself and needs `datasets` only for folders saved by it and hub datasets. Before a run's
imports, the packages it will not use are made unimportable for its process (``sys.modules[name] = None``:
`import` raises ImportError and ``importlib.util.find_spec`` says absent), so the libraries skip them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .data.sources import split_spec


def skip_unused_imports(cfg) -> None:
    """Before a training run imports its stack: leave out bitsandbytes unless the run quantizes (--quant_bits) or
    loads a quantized checkpoint, and `datasets` unless a dataset is a folder or a hub id."""
    if cfg.tuner.quant_bits is None and not _saved_quantized(cfg.model.model):
        _leave_out("bitsandbytes")
    specs = [*cfg.data.dataset, *cfg.data.val_dataset]
    if not cfg.train.eval_dataset and all(Path(split_spec(s)[0]).is_file() for s in specs):
        _leave_out("datasets")


def _leave_out(name: str) -> None:
    if name not in sys.modules:
        sys.modules[name] = None


def _saved_quantized(model: str | None) -> bool:
    config = Path(model or "") / "config.json"
    if not config.is_file():
        return model is not None and not Path(model).exists()  # a hub id: its config is not known here
    try:
        return "quantization_config" in json.loads(config.read_text())
    except (OSError, ValueError):
        return True  # unreadable here: leave the decision to the loader
