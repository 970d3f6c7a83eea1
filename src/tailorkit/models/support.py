"""The model support table (the repository's docs/model_families.md), generated from the registry.

``python -m tailorkit.models.support`` prints it; after changing a family regenerate the committed page with
``python -m tailorkit.models.support --output docs/model_families.md`` (a test fails while it differs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .family import Family
from .registry import FAMILIES

HEADER = """# Supported model families

Generated from `tailorkit.models.registry` by
`python -m tailorkit.models.support --output docs/model_families.md`; do not edit by hand.

Every family below is exercised in `tests/models/test_families.py` on a tiny random build made by its
family file (real config classes, its real processor class, a locally trained tokenizer with the
family's special tokens and its real chat template): the inference prompt equals the training tokens
up to the first supervised token, the supervised tokens are exactly the assistant replies, and one
full-parameter sft step with an image changes every component of the module map. "template patch"
means the family file replaces the native chat template (the reason is in the notes, and a test shows
the native one fails). "packing" says whether `--packing`/`--padding_free` batches are exact (per-token losses
and gradients equal the samples run one by one, `tests/test_packing_parity.py`) or are refused, and why. Any other model with a processor, a chat template and an
`AutoModelForImageTextToText`/`AutoModelForCausalLM` class trains with a module map inferred from the
loaded model and printed (tested on VipLLaVA and Mistral, which have no family file, and compared with
every family file above: the LLM and lm_head always agree; Qwen3-VL's deepstack mergers, LLaVA-NeXT's and
OneVision's image_newline, Phi-4-multimodal's projections and Qwen2-Audio's audio tower are where the
inferred vision/aligner split differs). An audio family's "vision" component is its audio encoder (ms-swift's
mapping), and its sft step uses a .wav instead of an image.

"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _packing(fam: Family) -> str:
    if fam.packing_refusal:
        return "refused: " + fam.packing_refusal
    return "exact (parity-tested)" if fam.is_multimodal else "exact (parity-tested on Qwen2)"


def _row(fam: Family) -> str:
    module_map = "; ".join(f"{comp}: {', '.join(f'`{p}`' for p in getattr(fam, comp))}"
                           for comp in ("vision", "aligner", "llm", "lm_head") if getattr(fam, comp))
    classes = f"`{fam.model_class}` / `{fam.processor_class}`"
    template = "template patch" if fam.chat_template is not None else "native"
    tested = fam.support + (f" (skipped when {', '.join(fam.requires)} is not installed)" if fam.requires else "")
    cells = [f"`{fam.name}`", ", ".join(f"`{t}`" for t in fam.model_types), classes, module_map,
             ", ".join(f"`{t}`" for t in fam.lora_targets), template, _packing(fam), tested, fam.notes]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def support_table(families: dict[str, Family] = FAMILIES) -> str:
    """The whole docs page: header, then one row per registered family."""
    head = ("| family | model_type | classes (model / processor) | module map | LoRA targets (LLM) | template "
            "| packing | tested | notes |\n|---|---|---|---|---|---|---|---|---|\n")
    return HEADER + head + "\n".join(_row(f) for f in families.values()) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Print the table, or write it to ``--output``."""
    parser = argparse.ArgumentParser(prog="python -m tailorkit.models.support", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="file to write (default: print to stdout)")
    out = parser.parse_args(argv).output
    if out is None:
        print(support_table(), end="")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(support_table())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
