"""Start-up: a training run imports only what it needs.

Libraries import optional packages whenever they are installed: peft imports bitsandbytes (seconds, and
CUDA kernel warnings on a CPU machine) although only QLoRA, or a checkpoint saved quantized, uses it, and
GPTQModel (with triton: several seconds, and a banner) each time it wraps a layer, to ask whether the layer is
a GPTQ one, which only a checkpoint saved quantized has; the
transformers Trainer imports `datasets` (with pandas and pyarrow: over 100 MiB) although tailorkit reads
data files itself and needs `datasets` only for folders saved by it and hub datasets. Before a run's
imports, the packages it will not use are made unimportable for its process (``sys.modules[name] = None``:
`import` raises ImportError and ``importlib.util.find_spec`` says absent), so the libraries skip them, and
importable again when the run ends (tests run several CLI runs in one process).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .data.sources import split_spec


@contextmanager
def skip_unused_imports(cfg) -> Iterator[None]:
    """While a training run imports its stack and trains: leave out bitsandbytes unless the run quantizes
    (--quant_bits) or loads a quantized checkpoint, gptqmodel unless it loads a quantized checkpoint, deepspeed
    unless --deepspeed (accelerate imports it to unwrap any model), and `datasets` unless a dataset is a folder
    or a hub id."""
    names = []
    if not any(_saved_quantized(m) for m in _loaded_models(cfg)):
        names.append("gptqmodel")
        if cfg.tuner.quant_bits is None:
            names.append("bitsandbytes")
    if cfg.dist.deepspeed is None:
        names.append("deepspeed")
    specs = [*cfg.data.dataset, *cfg.data.val_dataset]
    if not cfg.train.eval_dataset and all(Path(split_spec(s)[0]).is_file() for s in specs):
        names.append("datasets")
    left_out = [name for name in names if name not in sys.modules]
    sys.modules.update(dict.fromkeys(left_out))
    try:
        yield
    finally:
        for name in left_out:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def _loaded_models(cfg) -> list[str | None]:
    """Every model a run loads: the trained one, and for rlhf kinds its reference, reward, value and teacher
    models (checkpoints that may each be saved quantized)."""
    models = [cfg.model.model]
    if hasattr(cfg, "rlhf"):  # an RlhfConfig
        models += [cfg.rlhf.ref_model, *cfg.grpo.reward_model, cfg.ppo.value_model, cfg.gkd.teacher_model]
    return [m for m in models if m] or [None]


def _saved_quantized(model: str | None) -> bool:
    config = Path(model or "") / "config.json"
    if not config.is_file():
        return model is not None and not Path(model).exists()  # a hub id: its config is not known here
    try:
        return "quantization_config" in json.loads(config.read_text())
    except (OSError, ValueError):
        return True  # unreadable here: leave the decision to the loader
