"""A model with no family file trains: the module map is inferred from the loaded model and printed.

VipLLaVA (transformers' VipLlavaForConditionalGeneration + LlavaProcessor) and Mistral have no family file."""

from __future__ import annotations

import json

import pytest
import torch

from tailorkit.config.train import DataArgs, ModelArgs, SftConfig, TrainArgs, TunerArgs
from tailorkit.data.encode import IGNORE, encode, encode_prompt
from tailorkit.data.formats import Conversation, parse_row
from tailorkit.models.llava import LLAVA_TEMPLATE, _TINY_VISION, _llama_text, _llama_tokenizer
from tailorkit.models.load import load_bundle
from tailorkit.models.registry import family_for_config
from tailorkit.models.tiny import save_tiny
from tailorkit.train.sft import sft


@pytest.fixture(scope="module")
def vipllava_dir(tmp_path_factory):
    from transformers import CLIPImageProcessor, LlavaProcessor, VipLlavaConfig, VipLlavaForConditionalGeneration

    out = tmp_path_factory.mktemp("tiny-vipllava")
    tok = _llama_tokenizer(LLAVA_TEMPLATE)
    cfg = VipLlavaConfig(vision_config=dict(model_type="clip_vision_model", **_TINY_VISION),
                         text_config=_llama_text(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layers=[-2, -1], tie_word_embeddings=False)
    torch.manual_seed(0)
    model = VipLlavaForConditionalGeneration(cfg)
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 28},
                                                                  crop_size={"height": 28, "width": 28}),
                               tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE)
    save_tiny(model, processor, out)
    return out


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    from transformers import MistralConfig, MistralForCausalLM

    from tailorkit.models.tiny import text_config
    from tailorkit.models.llava import _llama_tokenizer as tokenizer

    out = tmp_path_factory.mktemp("tiny-mistral")
    tok = tokenizer("{% for m in messages %}{{ '[' + m['role'] + '] ' + m['content'] + '</s>' }}{% endfor %}"
                    "{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}")
    torch.manual_seed(0)
    save_tiny(MistralForCausalLM(MistralConfig(**text_config(tok, eos_token_id=tok.eos_token_id, head_dim=16))), tok, out)
    return out


def test_vipllava_module_map_is_inferred_and_printed(vipllava_dir, capsys):
    bundle = load_bundle(ModelArgs(model=str(vipllava_dir), torch_dtype="float32"))
    assert family_for_config(bundle.model.config) is None
    fam = bundle.family
    assert fam.name == "inferred:vipllava"
    assert (fam.vision, fam.aligner, fam.llm, fam.lm_head) == (
        ("model.vision_tower",), ("model.multi_modal_projector",), ("model.language_model",), ("lm_head",))
    printed = capsys.readouterr().out
    assert "vipllava has no family file; inferred module map" in printed and "model.multi_modal_projector" in printed
    parts = {c: [n for n, _ in bundle.model.named_parameters() if fam.component_of(n) == c]
             for c in ("vision", "aligner", "llm", "lm_head", "other")}
    assert all(parts[c] for c in ("vision", "aligner", "llm", "lm_head")) and not parts["other"]


def test_text_model_without_family_file(mistral_dir, capsys):
    bundle = load_bundle(ModelArgs(model=str(mistral_dir), torch_dtype="float32"))
    assert (bundle.family.vision, bundle.family.llm, bundle.family.lm_head) == ((), ("model",), ("lm_head",))
    assert "mistral has no family file" in capsys.readouterr().out


@pytest.mark.slow
def test_vipllava_trains_without_family_file(vipllava_dir, tmp_path):
    from PIL import Image

    image = tmp_path / "img.png"
    Image.new("RGB", (28, 28), (200, 30, 30)).save(image)
    row = {"messages": [{"role": "user", "content": "<image>What colour is the shape?"},
                        {"role": "assistant", "content": "red"}], "images": [str(image)]}
    bundle = load_bundle(ModelArgs(model=str(vipllava_dir), torch_dtype="float32"))
    conv = parse_row(row, source="t.jsonl", line=1)
    enc = encode(conv, bundle.processor)
    first = next(i for i, label in enumerate(enc.labels) if label != IGNORE)
    prompt = encode_prompt(Conversation(messages=conv.messages[:1], images=conv.images), bundle.processor)
    assert prompt.input_ids == enc.input_ids[:first]
    assert bundle.tokenizer.decode(enc.input_ids[first:]).strip() == "red"

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(row) + "\n")
    cfg = SftConfig(model=ModelArgs(model=str(vipllava_dir), torch_dtype="float32"), data=DataArgs(dataset=[str(data)]),
                    tuner=TunerArgs(train_type="lora", freeze_vit=False, freeze_aligner=False),
                    train=TrainArgs(output_dir=str(tmp_path / "out"), max_steps=1, save_strategy="no",
                                    logging_steps=1))
    result = sft(cfg)
    assert result.bundle.family.name == "inferred:vipllava"
    lora = [n for n, p in result.model.named_parameters() if p.requires_grad]
    for comp in ("vision", "aligner", "llm"):
        assert any(result.bundle.family.component_of(n) == comp for n in lora), f"no LoRA weight in {comp}"
    assert [h["loss"] for h in result.log_history if "loss" in h]


def test_resolve_family_infers_from_structure_without_weights(vipllava_dir, capsys):
    """doctor's path: the same map from the model's structure on the meta device."""
    from transformers import AutoConfig

    from tailorkit.models.load import resolve_family

    fam = resolve_family(AutoConfig.from_pretrained(vipllava_dir), None)
    assert (fam.vision, fam.aligner, fam.llm, fam.lm_head) == (
        ("model.vision_tower",), ("model.multi_modal_projector",), ("model.language_model",), ("lm_head",))
    assert "inferred module map" in capsys.readouterr().out
