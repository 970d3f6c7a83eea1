"""`tailorkit export --merge_lora true`: the reloaded merged folder gives base + adapter's logits (<= 1e-4)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from export_helpers import logits, random_adapter, run_export, tensors, text_inputs, vl_inputs
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
from transformers import AutoProcessor, AutoTokenizer

from tailorkit.errors import ConfigError

ATOL = 1e-4


def _peft(base, adapter):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter))


def _check_merged(out, reference_model, inputs, auto, base_model=None):
    merged = auto.from_pretrained(str(out), dtype=torch.float32)
    ref = logits(reference_model, inputs)
    torch.testing.assert_close(logits(merged, inputs), ref, rtol=0, atol=ATOL)
    if base_model is not None:  # the adapter changes the answer, so equality above is not trivial
        assert not torch.allclose(logits(base_model, inputs), ref, atol=1e-3)
    report = json.loads((out / "export_report.json").read_text())
    assert report["merge"]["max_abs_logit_diff"] <= report["merge"]["tolerance"] <= 2e-4
    return merged, report


def test_lora_merge_text_model(tiny_text_dir, tmp_path):
    adapter = random_adapter(AutoModelForCausalLM.from_pretrained(tiny_text_dir), tmp_path / "lora", seed=1,
                             target_modules=["q_proj", "v_proj", "down_proj"])
    out = tmp_path / "merged"
    run_export(out, model=str(tiny_text_dir), adapters=[str(adapter)])
    tok = AutoTokenizer.from_pretrained(tiny_text_dir)
    reference = _peft(AutoModelForCausalLM.from_pretrained(tiny_text_dir, dtype=torch.float32), adapter)
    merged, report = _check_merged(out, reference, text_inputs(tok), AutoModelForCausalLM,
                                   AutoModelForCausalLM.from_pretrained(tiny_text_dir, dtype=torch.float32))
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    assert AutoTokenizer.from_pretrained(out).chat_template == tok.chat_template
    assert (out / "generation_config.json").is_file() and report["rows"] == "built-in probes"


def test_lora_merge_qwen2_5_vl(tiny_vl_dir, tiny_vl_adapters, tmp_path):
    out = tmp_path / "merged"
    run_export(out, model=str(tiny_vl_dir), adapters=[f"alpha={tiny_vl_adapters['alpha']}"])
    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    reference = _peft(AutoModelForImageTextToText.from_pretrained(tiny_vl_dir, dtype=torch.float32),
                      tiny_vl_adapters["alpha"])
    _check_merged(out, reference, vl_inputs(processor), AutoModelForImageTextToText,
                  AutoModelForImageTextToText.from_pretrained(tiny_vl_dir, dtype=torch.float32))
    exported = AutoProcessor.from_pretrained(out)
    assert exported.chat_template == processor.chat_template
    assert exported.image_processor.to_dict() == processor.image_processor.to_dict()


def test_dora_merge(tiny_text_dir, tmp_path):
    adapter = random_adapter(AutoModelForCausalLM.from_pretrained(tiny_text_dir), tmp_path / "dora", seed=2,
                             target_modules=["q_proj", "o_proj", "up_proj"], use_dora=True)
    assert json.loads((adapter / "adapter_config.json").read_text())["use_dora"] is True
    out = tmp_path / "merged"
    run_export(out, model=str(tiny_text_dir), adapters=[str(adapter)])
    reference = _peft(AutoModelForCausalLM.from_pretrained(tiny_text_dir, dtype=torch.float32), adapter)
    _check_merged(out, reference, text_inputs(AutoTokenizer.from_pretrained(tiny_text_dir)), AutoModelForCausalLM,
                  AutoModelForCausalLM.from_pretrained(tiny_text_dir, dtype=torch.float32))


def test_resized_embedding_and_its_tokenizer_are_exported(tiny_text_dir, tmp_path):
    """Tokens added in training: the adapter saves the resized embedding and lm_head in full (modules_to_save)."""
    tok = AutoTokenizer.from_pretrained(tiny_text_dir)
    tok.add_tokens(["<tool>", "</tool>"])
    base = AutoModelForCausalLM.from_pretrained(tiny_text_dir)
    base.resize_token_embeddings(len(tok), mean_resizing=False)
    adapter = random_adapter(base, tmp_path / "ckpt", seed=3, target_modules=["q_proj"],
                             modules_to_save=["embed_tokens", "lm_head"])
    tok.save_pretrained(adapter)  # a training checkpoint carries its processor
    out = tmp_path / "merged"
    result = run_export(out, model=str(tiny_text_dir), adapters=[str(adapter)])
    assert any("resized" in n for n in result.report["notes"])
    resized = AutoModelForCausalLM.from_pretrained(tiny_text_dir, dtype=torch.float32)
    resized.resize_token_embeddings(len(tok), mean_resizing=False)
    inputs = dict(tok(["<tool> What colour is the sky? </tool>"], return_tensors="pt"))
    merged, _ = _check_merged(out, _peft(resized, adapter), inputs, AutoModelForCausalLM)
    assert merged.get_input_embeddings().weight.shape[0] == len(tok) == merged.config.vocab_size
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("<tool>") == tok.convert_tokens_to_ids("<tool>")


def _write_run(folder, model_dir, **settings):
    """A checkpoint folder as a training run leaves it: adapter + args.yaml (+ processor)."""
    folder.mkdir(parents=True, exist_ok=True)
    run = {"model": str(model_dir), "torch_dtype": "float32", "train_type": "lora", **settings}
    (folder / "args.yaml").write_text(yaml.safe_dump(run))
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return folder


def test_reward_model_exports_with_its_head(tiny_text_dir, tmp_path):
    """A reward model (`rlhf --rlhf_type rm`): the causal LM with a value head, the head trained next to the adapter.
    The export is the merged LM's own files plus v_head.weight; its values equal base + adapter + head's."""
    from tailorkit.models.value_head import add_value_head, has_value_head, load_reward_model, token_values

    tok = AutoTokenizer.from_pretrained(tiny_text_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_text_dir)
    untrained_head = add_value_head(base).weight.detach().clone()
    ckpt = random_adapter(base, tmp_path / "rm" / "checkpoint-final", seed=4, target_modules=["q_proj", "v_proj"],
                          modules_to_save=["v_head"])
    _write_run(ckpt.parent, tiny_text_dir, rlhf_type="rm")
    out = tmp_path / "merged"
    result = run_export(out, ckpt_dir=str(ckpt.parent))
    assert result.report["head"] == "reward" and result.report["auto_class"] == "AutoModelForCausalLM"
    assert result.report["merge"]["max_abs_logit_diff"] <= result.report["merge"]["tolerance"] <= 2e-4
    assert has_value_head(out) and not any(".lora_" in k for k in tensors(out))
    reference = load_reward_model(str(ckpt)).model  # base + adapter (merged in memory) + the trained head
    exported = load_reward_model(str(out)).model
    inputs = text_inputs(tok)
    with torch.no_grad():
        values = [token_values(m.v_head, m(**inputs, output_hidden_states=True).hidden_states[-1])
                  for m in (reference, exported)]
    torch.testing.assert_close(values[1], values[0], rtol=0, atol=ATOL)
    assert not torch.equal(exported.v_head.weight, untrained_head)  # the trained value head, not a new one
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"  # the LM loads with plain transformers
    with pytest.raises(ConfigError, match="quantized reward models"):
        run_export(tmp_path / "q", ckpt_dir=str(ckpt.parent), quant_method="bnb")


def test_dpo_checkpoint_exports_from_its_run_folder(tiny_text_dir, tmp_path):
    ckpt = random_adapter(AutoModelForCausalLM.from_pretrained(tiny_text_dir), tmp_path / "dpo" / "checkpoint-final",
                          seed=5, target_modules=["q_proj", "v_proj"])
    _write_run(ckpt.parent, tiny_text_dir, rlhf_type="dpo")
    out = tmp_path / "merged"
    result = run_export(out, ckpt_dir=str(tmp_path / "dpo"))
    assert result.report["head"] == "lm" and result.report["model"] == str(tiny_text_dir)
    reference = _peft(AutoModelForCausalLM.from_pretrained(tiny_text_dir, dtype=torch.float32), ckpt)
    _check_merged(out, reference, text_inputs(AutoTokenizer.from_pretrained(tiny_text_dir)), AutoModelForCausalLM)


def test_refuses_a_non_empty_output_folder_before_any_work(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "weights.bin").write_text("an earlier export")
    with pytest.raises(ConfigError, match="not empty"):
        run_export(out, model=str(tmp_path / "no-such-model"))  # refused before the model is even looked at
    assert (out / "weights.bin").read_text() == "an earlier export" and sorted(out.iterdir()) == [out / "weights.bin"]


def test_a_failed_merge_check_writes_nothing_to_output_dir(tiny_text_dir, tmp_path, monkeypatch):
    """The verification can fail: with a zero tolerance the float rounding of merging is caught."""
    import tailorkit.export.run as run

    adapter = random_adapter(AutoModelForCausalLM.from_pretrained(tiny_text_dir), tmp_path / "lora", seed=6,
                             target_modules=["q_proj", "v_proj"])
    monkeypatch.setattr(run, "merge_tolerance", lambda dtype, reference: -1.0)
    out = tmp_path / "merged"
    with pytest.raises(run.VerificationFailed, match="max \\|delta logit\\|"):
        run_export(out, model=str(tiny_text_dir), adapters=[str(adapter)])
    assert not out.exists()
    (staging,) = tmp_path.glob(".merged.staging-*")
    assert json.loads((staging / "export_report.json").read_text())["merge"]["tolerance"] == -1.0


def test_a_merge_never_touches_the_vision_tower_it_did_not_train(tiny_vl_dir, tiny_vl_adapters, tmp_path):
    out = tmp_path / "merged"
    run_export(out, model=str(tiny_vl_dir), adapters=[str(tiny_vl_adapters["beta"])])
    base, merged = tensors(tiny_vl_dir), tensors(out)
    visual = [k for k in base if k.startswith("visual.")]  # files keep Qwen2.5-VL's original key names
    assert visual and all(torch.equal(base[k], merged[k]) for k in visual)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[q], merged[q])
