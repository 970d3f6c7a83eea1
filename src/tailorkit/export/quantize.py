"""Quantize a written (merged) model folder into another: GPTQ and AWQ through GPTQModel, bitsandbytes 4/8-bit
and FP8 through transformers' own quantizers.

Only the language model's linear layers are quantized; the vision tower, the aligner, lm_head and the
embeddings stay in the source precision (GPTQModel quantizes only the decoder layers of its model definition;
the others get the family's full-precision modules as their skip list).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path

import torch

from ..errors import ConfigError, ModelError
from ..models.family import Family

NEEDS = {"gptq": ("gptqmodel", "optimum"), "awq": ("gptqmodel",), "bnb": ("bitsandbytes",), "fp8": ()}


def check_quantizer(method: str) -> None:
    """Before any work: the method's packages are installed and the machine can run it."""
    missing = [p for p in NEEDS[method] if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(f"--quant_method {method} needs {', '.join(missing)}: pip install 'tailorkit[quant]'")
    if method == "fp8" and not torch.cuda.is_available():
        raise ConfigError("--quant_method fp8 needs a CUDA GPU (transformers writes FP8 weights only on a GPU, and "
                          "the export is verified by running it); none is visible. Use gptq, awq or bnb on this "
                          "machine")


def check_layer_sizes(model: torch.nn.Module, family: Family, method: str, group_size: int) -> None:
    """gptq/awq group the input features of each quantized linear layer; AWQ's clipping search also takes the
    output features 64 at a time. A layer that does not fit is an error here, not a crash mid-quantization."""
    if method not in ("gptq", "awq"):
        return
    for name in family.linear_leaf_names(model, ("llm",)):
        if ".lora_" in name:  # the adapter's own layers are merged away, never quantized
            continue
        layer = model.get_submodule(name)
        if layer.in_features % group_size:
            raise ConfigError(f"{name} has {layer.in_features} input features, not a multiple of --group_size "
                              f"{group_size}; choose a --group_size that divides it")
        if method == "awq" and layer.out_features % 64:
            raise ConfigError(f"{name} has {layer.out_features} output features; awq needs multiples of 64 (its "
                              "clipping search takes 64 rows at a time); use --quant_method gptq for this model")


def full_precision_modules(family: Family) -> list[str]:
    """Module prefixes that stay unquantized: vision tower, aligner, lm_head."""
    return [*family.vision, *family.aligner, *family.lm_head]


def quantize_folder(method: str, src: Path, out: Path, *, family: Family, auto_class: str, bits: int,
                    group_size: int, calibration: list[dict], processor) -> dict:
    """Write the quantized model (with the processor) into ``out``; returns what the report records."""
    if method in ("gptq", "awq"):
        info = _gptqmodel(method, src, out, family=family, bits=bits, group_size=group_size,
                          calibration=calibration)
    else:
        info = _transformers_quantizer(method, src, out, family=family, auto_class=auto_class, bits=bits,
                                       group_size=group_size)
    processor.save_pretrained(str(out))
    return info


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _gptqmodel(method: str, src: Path, out: Path, *, family: Family, bits: int, group_size: int,
               calibration: list[dict]) -> dict:
    """GPTQ / AWQ with GPTQModel on the decoder layers, calibrated on rows encoded by our encoder."""
    # GPTQModel 7.6 sizes its CPU worker pool as half the cores but asks for 2 model-loader workers, which
    # fails on machines with 1-3 cores; 2 workers is what it would pick on a 4-core machine.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, ((os.cpu_count() or 1) + 1) // 2)))
    from gptqmodel import BACKEND, AWQConfig, GPTQConfig, GPTQModel

    device = _device()
    # GPU kernels and AWQ's CPU kernel take 16-bit activations only; GPTQ on the CPU keeps the source dtype.
    dtype = torch.float16 if device == "cuda" else (torch.bfloat16 if method == "awq" else _source_dtype(src))
    config_cls = GPTQConfig if method == "gptq" else AWQConfig
    qcfg = config_cls(bits=bits, group_size=group_size, offload_to_disk=False)
    backend = BACKEND.AWQ_TORCH if method == "awq" and device == "cpu" else BACKEND.AUTO
    try:
        qmodel = GPTQModel.load(str(src), qcfg, device=device, dtype=dtype)
    except (ValueError, TypeError, KeyError, NotImplementedError) as e:
        raise ModelError(f"GPTQModel cannot load {family.name} from {src} for {method}: {e}") from e
    # Calibrate on our encoder's batches (the training tokens and pixels), not on GPTQModel's own rendering.
    qmodel.prepare_dataset = lambda calibration_dataset, batch_size=1, **_: calibration_dataset
    try:
        with _gptqmodel_logs_in(src):
            qmodel.quantize(calibration, batch_size=1, backend=backend)
    except (AssertionError, ValueError, NotImplementedError, RuntimeError) as e:
        raise ModelError(f"{method} quantization of {family.name} failed: {type(e).__name__}: {e}") from e
    qmodel.save(str(out))
    _keep_unconverted(out / "config.json", full_precision_modules(family))
    return {"library": f"gptqmodel {_version('gptqmodel')}", "dtype": _saved_dtype(out),
            "calibration_rows": len(calibration)}


def _source_dtype(folder: Path) -> torch.dtype:
    return getattr(torch, _saved_dtype(folder).replace("None", "float32"))


def _saved_dtype(folder: Path) -> str:
    """The dtype of the unquantized weights (vision tower, embeddings, scales) as the export's config states it."""
    config = json.loads((folder / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype"))


@contextlib.contextmanager
def _gptqmodel_logs_in(folder: Path):
    """GPTQModel 7.6 writes per-layer timing logs into ./logs of the working directory (a module constant);
    they go to the temporary merged folder instead, removed after the export (quant_log.csv, written into the
    export, keeps the per-layer quantization errors)."""
    from gptqmodel.looper import loop_processor

    before = loop_processor._PROJECT_LOG_DIR
    loop_processor._PROJECT_LOG_DIR = folder / "gptqmodel-logs"
    try:
        yield
    finally:
        loop_processor._PROJECT_LOG_DIR = before


def _keep_unconverted(config_file: Path, modules: list[str]) -> None:
    """Name the full-precision modules in quantization_config: transformers' AWQ loader otherwise replaces every
    linear layer (a vision tower included) with an empty quantized one."""
    config = json.loads(config_file.read_text())
    q = config["quantization_config"]
    q["modules_to_not_convert"] = sorted(set(q.get("modules_to_not_convert") or []) | set(modules))
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _transformers_quantizer(method: str, src: Path, out: Path, *, family: Family, auto_class: str, bits: int,
                            group_size: int) -> dict:
    """bitsandbytes NF4 (double quant) / LLM.int8, or block-wise FP8: quantized while loading, then saved."""
    import transformers
    from transformers import BitsAndBytesConfig, FineGrainedFP8Config

    skip = full_precision_modules(family)
    dtype = _source_dtype(src)
    if method == "bnb" and bits == 4:
        qconf = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=skip)
    elif method == "bnb":
        qconf = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    else:
        qconf = FineGrainedFP8Config(weight_block_size=(group_size, group_size), modules_to_not_convert=skip)
    kwargs = {"device_map": _device()} if torch.cuda.is_available() else {}
    model = getattr(transformers, auto_class).from_pretrained(str(src), dtype=dtype, quantization_config=qconf,
                                                               **kwargs)
    model.save_pretrained(str(out))
    library = "bitsandbytes" if method == "bnb" else "transformers"
    return {"library": f"{library} {_version(library)}", "dtype": str(dtype).replace("torch.", "")}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
