"""The export verb's arguments (ms-swift's names, generated from the config) and the quantizer packages."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution, version

import pytest
from packaging.requirements import Requirement

from tailorkit.cli import _verbs, build_parser, parse
from tailorkit.errors import ConfigError

MS_SWIFT_NAMES = ["--adapters", "--ckpt_dir", "--model", "--merge_lora", "--output_dir", "--quant_method",
                  "--quant_bits", "--group_size", "--dataset", "--quant_n_samples", "--max_length", "--push_to_hub",
                  "--hub_model_id", "--hub_private_repo", "--hub_token"]


def test_every_ms_swift_argument_is_a_flag_with_help():
    text = build_parser("export", _verbs()["export"]).format_help()
    for flag in MS_SWIFT_NAMES:
        assert flag in text, flag


def test_merge_and_quantize_arguments_parse():
    cfg = parse("export", ["--adapters", "out/checkpoint-final", "--model", "base", "--merge_lora", "true",
                           "--quant_method", "gptq", "--quant_bits", "4", "--group_size", "64", "--dataset", "a.jsonl",
                           "--quant_n_samples", "32", "--output_dir", "exp"])
    assert (cfg.source.adapters, cfg.export.merge_lora, cfg.export.quant_method) == (["out/checkpoint-final"], True,
                                                                                      "gptq")
    assert (cfg.export.quant_bits, cfg.export.group_size, cfg.export.quant_n_samples) == (4, 64, 32)
    with pytest.raises(ConfigError, match="nothing to export"):
        parse("export", ["--model", "base", "--output_dir", "exp"])
    with pytest.raises(ConfigError, match="quant_method"):
        parse("export", ["--model", "base", "--output_dir", "exp", "--quant_method", "hqq"])


@pytest.mark.parametrize("package", ["gptqmodel", "optimum", "gradio", "bitsandbytes"])
def test_quantizer_and_web_ui_packages_co_install(package):
    """The dev extras install GPTQModel next to gradio (the web UI's): every requirement of each is met by what
    is installed (GPTQModel 7.7 needs pillow>=13, which gradio forbids; hence 7.6)."""
    dist = distribution(package)
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{package} requires {req} but {req.name} is not installed")
        assert req.specifier.contains(installed, prereleases=True), f"{package} requires {req}, found {installed}"
