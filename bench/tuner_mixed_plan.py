"""Mixed plan "ViT full + LLM LoRA": memory and reload fidelity of the three ways to keep the ViT trainable.

  ours            requires_grad on the ViT; at save its weights go into the adapter file + modules_to_save
  peft-naive      requires_grad on the ViT; plain PeftModel.save_pretrained (what people do by hand)
  modules_to_save peft's ModulesToSaveWrapper on the ViT (a second full copy lives in memory)

The ViT's trainable weights are perturbed (as training would) before saving; the reload is plain transformers + peft.
Run: PYTHONPATH=src HF_HUB_OFFLINE=1 python bench/tuner_mixed_plan.py
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch


def param_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def perturb_vit(model: torch.nn.Module) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".visual." in name and p.requires_grad and ".lora_" not in name:
                p.add_(torch.randn_like(p) * 0.05)


def main() -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText

    from tailorkit.config.train import ModelArgs, TunerArgs
    from tailorkit.demo.shapes import draw
    from tailorkit.models.load import load_bundle
    from tailorkit.models.tiny import build_qwen2_5_vl
    from tailorkit.tuners.adapters import apply_tuner
    from tailorkit.tuners.runtime import save_plan_extras

    tmp = Path(tempfile.mkdtemp())
    base_dir = tmp / "base"
    build_qwen2_5_vl(base_dir)
    bundle = load_bundle(ModelArgs(model=str(base_dir), torch_dtype="float32"))
    prompt = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What colour?<|im_end|>\n"
              "<|im_start|>assistant\n")
    inputs = dict(bundle.processor(text=[prompt], images=[draw("red", "circle", random.Random(0))],
                                   return_tensors="pt"))

    def reload_diff(model, folder: Path) -> float:
        model.eval()
        with torch.no_grad():
            want = model(**inputs).logits
            base = AutoModelForImageTextToText.from_pretrained(str(base_dir), dtype=torch.float32)
            got = PeftModel.from_pretrained(base, str(folder)).eval()(**inputs).logits
        return (want - got).abs().max().item()

    rows = []
    ours, plan = apply_tuner(bundle, TunerArgs(vit="full", llm="lora"))
    perturb_vit(ours)
    ours.save_pretrained(str(tmp / "naive"))
    rows.append(("peft-naive", param_bytes(ours), reload_diff(ours, tmp / "naive")))
    ours.save_pretrained(str(tmp / "ours"))
    save_plan_extras(ours, plan, tmp / "ours")
    rows.insert(0, ("ours", param_bytes(ours), reload_diff(ours, tmp / "ours")))

    plain = AutoModelForImageTextToText.from_pretrained(str(base_dir), dtype=torch.float32)
    targets = r"^model\.language_model\..*_proj$"
    mts = get_peft_model(plain, LoraConfig(r=8, lora_alpha=32, target_modules=targets, modules_to_save=["visual"]))
    perturb_vit(mts)
    mts.save_pretrained(str(tmp / "mts"))
    rows.append(("modules_to_save", param_bytes(mts), reload_diff(mts, tmp / "mts")))

    vit_bytes = sum(p.numel() * p.element_size() for n, p in bundle.model.named_parameters() if ".visual." in n)
    print(f"tiny Qwen2.5-VL, ViT (incl. merger) = {vit_bytes:,} bytes of fp32 parameters")
    print(f"{'approach':<16} {'param bytes':>12} {'vs ours':>8} {'reload max |dlogit|':>20}")
    for name, nbytes, diff in rows:
        print(f"{name:<16} {nbytes:>12,} {nbytes / rows[0][1]:>8.2f} {diff:>20.3g}")


if __name__ == "__main__":
    main()
