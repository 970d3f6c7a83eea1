"""Every registered family, on its tiny random build with its real processor and chat template:
(a) the inference prompt equals the training tokens up to the first supervised token,
(b) the supervised tokens are exactly the assistant replies (plus the template's end-of-turn token),
(c) one sft step with an image runs, changes every component, and the module map's parts are
    non-empty and disjoint."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from helpers import write_wav
from tailorkit.config.train import DataArgs, ModelArgs, SftConfig, TrainArgs, TunerArgs
from tailorkit.data.encode import IGNORE, encode, encode_prompt
from tailorkit.data.formats import Conversation, parse_row
from tailorkit.models.load import ModelBundle, load_bundle
from tailorkit.models.registry import FAMILIES
from tailorkit.train.sft import sft

COMPONENTS = ("vision", "aligner", "llm", "lm_head")


def _missing(fam) -> list[str]:
    return [p for p in fam.requires if importlib.util.find_spec(p) is None]


def _params(fam):
    marks = []
    if _missing(fam):
        marks.append(pytest.mark.skip(reason=f"{fam.name} needs the optional package(s) {_missing(fam)}"))
    return pytest.param(fam.name, marks=marks, id=fam.name)


FAMILY_PARAMS = [_params(f) for f in FAMILIES.values()]


@pytest.fixture(scope="session")
def image_path(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "shape.png"
    img = Image.new("RGB", (28, 28), "white")
    img.paste((255, 0, 0), (7, 7, 21, 21))
    img.save(path)
    return path


def _media_kind(fam) -> str | None:
    """The media the family's tiny rows carry: images, or audio for an audio-only family (Qwen2-Audio)."""
    return fam.media[0] if fam.is_multimodal else None


def _row(fam) -> dict:
    kind = _media_kind(fam)
    first = f"<{kind}>What colour is the shape?" if kind else "What colour is the shape?"
    return {"messages": [{"role": "user", "content": first}, {"role": "assistant", "content": "red"},
                         {"role": "user", "content": "What shape is this?"},
                         {"role": "assistant", "content": "a square"}]}


def _conversation(fam, image_path) -> Conversation:
    row = _row(fam)
    if _media_kind(fam):
        row[f"{_media_kind(fam)}s"] = [str(_media_file(fam, image_path))]
    return parse_row(row, source="test.jsonl", line=1)


def _media_file(fam, image_path):
    if _media_kind(fam) == "audio":
        return write_wav(image_path.parent / "tone.wav")
    return image_path


def _bundle(name, family_dirs) -> ModelBundle:
    return load_bundle(ModelArgs(model=str(family_dirs(name)), torch_dtype="float32",
                                 trust_remote_code=FAMILIES[name].trust_remote_code))


@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_prompt_is_training_prefix(name, family_dirs, image_path):
    bundle = _bundle(name, family_dirs)
    assert bundle.family.name == name
    conv = _conversation(bundle.family, image_path)
    enc = encode(conv, bundle.processor)
    first = next(i for i, label in enumerate(enc.labels) if label != IGNORE)
    prompt_conv = Conversation(messages=conv.messages[:1], images=conv.images, audios=conv.audios,
                               source=conv.source, line=1)
    prompt = encode_prompt(prompt_conv, bundle.processor)
    assert prompt.input_ids == enc.input_ids[:first]
    for key, value in prompt.media.items():
        assert torch.equal(value, enc.media[key]), key
    if bundle.family.is_multimodal:  # Monkey's images travel as file paths in the tokens, the others' as tensors
        path = re.search(r"<img>(.+?)</img>", bundle.tokenizer.decode(prompt.input_ids))
        assert prompt.media or (path and Path(path.group(1)).is_file()), "the prompt carries no image"


def _spans(labels: list[int]) -> list[list[int]]:
    spans, current = [], []
    for label in labels + [IGNORE]:
        if label != IGNORE:
            current.append(label)
        elif current:
            spans.append(current)
            current = []
    return spans


@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_supervised_tokens_are_the_replies(name, family_dirs, image_path):
    bundle = _bundle(name, family_dirs)
    conv = _conversation(bundle.family, image_path)
    enc = encode(conv, bundle.processor)
    replies = [m["content"] for m in conv.messages if m["role"] == "assistant"]
    spans = _spans(enc.labels)
    assert len(spans) == len(replies)
    eot = bundle.family.end_of_turn
    for span, reply in zip(spans, replies):
        text = bundle.tokenizer.decode(span)
        if eot:
            assert text.endswith(eot), f"reply span {text!r} does not end with {eot!r}"
            text = text[: -len(eot)]
        assert text.strip() == reply


def _component_params(fam, model) -> dict[str, set[str]]:
    parts = {c: set() for c in (*COMPONENTS, "other")}
    for pname, _ in model.named_parameters():
        parts[fam.component_of(pname)].add(pname)
    return parts


def _matching(fam, pname: str) -> set[str]:
    return {c for c in COMPONENTS for p in getattr(fam, c) if pname == p or pname.startswith(p + ".")}


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_one_sft_step_with_image(name, family_dirs, image_path, tmp_path):
    fam = FAMILIES[name]
    data = tmp_path / "train.jsonl"
    row = _row(fam)
    if _media_kind(fam):
        row[f"{_media_kind(fam)}s"] = [str(_media_file(fam, image_path))]
    data.write_text(json.dumps(row) + "\n")
    cfg = SftConfig(model=ModelArgs(model=str(family_dirs(name)), torch_dtype="float32",
                                    trust_remote_code=fam.trust_remote_code),
                    data=DataArgs(dataset=[str(data)]),
                    tuner=TunerArgs(train_type="full", **({"freeze_vit": False, "freeze_aligner": False}
                                                          if fam.is_multimodal else {})),
                    train=TrainArgs(output_dir=str(tmp_path / "out"), max_steps=1, learning_rate=1e-3,
                                    save_strategy="no", logging_steps=1, weight_decay=0.0))
    before = _bundle(name, family_dirs).model
    result = sft(cfg)
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))

    model = result.model
    parts = _component_params(fam, model)
    declared = [c for c in COMPONENTS if getattr(fam, c)]
    for comp in declared:
        assert parts[comp], f"{comp} owns no parameter"
    for pname, _ in model.named_parameters():
        hits = _matching(fam, pname)
        # the aligner may sit inside the vision tower (Qwen's merger); no other nesting is allowed
        assert len(hits) <= 1 or hits == {"vision", "aligner"}, f"{pname} is in {hits}"
    old = dict(before.named_parameters())
    for comp in declared:
        changed = [p for p in parts[comp] if not torch.equal(old[p], dict(model.named_parameters())[p].detach())]
        assert changed, f"no {comp} parameter changed in the step (did the image reach the model?)"


@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_family_entry_matches_its_tiny_model(name, family_dirs):
    """The registry entry names the classes that load, and its LoRA targets are the LLM's linear leaves."""
    bundle = _bundle(name, family_dirs)
    fam = bundle.family
    assert fam.model_class.split(" ")[0] == type(bundle.model).__name__
    if fam.processor_class == "AutoTokenizer":  # text families: whichever tokenizer class the checkpoint names
        assert not hasattr(bundle.processor, "image_processor")
    else:
        assert fam.processor_class.split(" ")[0] == type(bundle.processor).__name__
    leaves = {n.rsplit(".", 1)[-1] for n in fam.linear_leaf_names(bundle.model, ("llm",))}
    assert leaves == set(fam.lora_targets)
    if fam.end_of_turn:
        assert fam.end_of_turn in bundle.tokenizer.get_vocab(), "end_of_turn is not one token"


PATCHED = [p for p in FAMILY_PARAMS if FAMILIES[p.values[0]].chat_template is not None]


@pytest.mark.parametrize("name", PATCHED)
def test_template_patch_is_needed(name, family_dirs, image_path):
    """Without the family's template patch the native template cannot train this conversation (or trains
    replies that never end with the end-of-turn token)."""
    from tailorkit.errors import DataError, ModelError
    from tailorkit.models.load import load_processor

    fam = FAMILIES[name]
    try:
        processor = load_processor(str(family_dirs(name)), fam.trust_remote_code)
    except ModelError as e:  # no native template at all
        assert "no chat template" in str(e)
        return
    try:
        enc = encode(_conversation(fam, image_path), processor)
    except (DataError, TypeError, ValueError):
        return
    last_reply = _spans(enc.labels)[-1]
    assert not getattr(processor, "tokenizer", processor).decode(last_reply).endswith(fam.end_of_turn)


# Where the inferred map (for models without a family file) differs from the family file, and why.
INFERENCE_DIFFERS = {
    "qwen3_vl": "the deepstack mergers have no conventional aligner name and stay in the vision tower",
    "llava_next": "the learned image_newline has no conventional name and is 'other'",
    "llava_onevision": "the learned image_newline has no conventional name and is 'other'",
    "phi4_multimodal": "img_projection_up/down have no conventional aligner name and stay in the vision tower",
    "qwen2_audio": "the audio tower has no conventional vision-tower name and is 'other'",
}


@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_inferred_map_agrees_with_family_file(name, family_dirs, capsys):
    """The module map inferred for unregistered models, run on every registered family: the LLM and lm_head
    always agree; vision/aligner agree except where INFERENCE_DIFFERS says why."""
    from tailorkit.models.load import infer_family

    bundle = _bundle(name, family_dirs)
    fam = bundle.family
    inferred = infer_family(bundle.model, bundle.model.config, fam.auto_class)
    assert "inferred module map" in capsys.readouterr().out
    diff = {n: (fam.component_of(n), inferred.component_of(n)) for n, _ in bundle.model.named_parameters()
            if fam.component_of(n) != inferred.component_of(n)}
    if name not in INFERENCE_DIFFERS:
        assert not diff
        return
    assert diff, f"inference now matches {name}: drop it from INFERENCE_DIFFERS"
    assert all({a, b} <= {"vision", "aligner", "other"} for a, b in diff.values()), diff


@pytest.mark.parametrize("name", PATCHED)
def test_serving_loads_the_patched_template(name, family_dirs):
    """Engines that load a processor by path (vLLM, reward models) get the template training used."""
    from tailorkit.models.load import load_family_processor

    fam = FAMILIES[name]
    processor, family = load_family_processor(str(family_dirs(name)), ModelArgs(
        model=str(family_dirs(name)), trust_remote_code=fam.trust_remote_code))
    assert family.name == name
    assert processor.chat_template == fam.chat_template
