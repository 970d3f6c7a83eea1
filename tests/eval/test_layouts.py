"""Every layout is detected from the released on-disk form, read into prompts with references, and bad input
names its file, line and field; names that are not on this machine say how to point at a local copy."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import write_mcq, write_mme, write_mme_parquet, write_textvqa, write_user_data, write_vqav2

from tailorkit.data.formats import text_of
from tailorkit.data.media import load_image
from tailorkit.errors import ConfigError, DataError
from tailorkit.eval.tasks import LAYOUTS, detect_layout, load_task, load_tasks


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """{layout: path} of one tiny synthetic copy of each layout."""
    root = tmp_path_factory.mktemp("eval-layouts")
    return {"mme": write_mme(root), "textvqa": write_textvqa(root), "vqav2": write_vqav2(root),
            "qa": write_user_data(root, [("What colour is it?", "red", "red"), ("Say hi", "hi", None)]),
            "mcq": write_mcq(root, [
                {"messages": [{"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": "blue"}],
                 "choices": ["red", "blue", "green"]},
                {"question": "Grass colour?", "A": "red", "B": "green", "answer": "B"}])}


def test_every_registered_layout_is_detected_and_read(layouts):
    assert set(layouts) == set(LAYOUTS)
    for layout, path in layouts.items():
        assert detect_layout(str(path)) == layout
        task = load_task(str(path))
        assert task.layout == layout and task.items
        for item in task.items:
            assert item.conversation.messages[-1]["role"] == "user" and item.reference


def test_mme_release_folder(layouts):
    task = load_task(str(layouts["mme"]))
    assert task.name == "mme" and len(task.items) == 8  # eval_tool/ is not a category
    cats = {i.meta["category"] for i in task.items}
    assert cats == {"artwork", "color"}
    first = task.items[0]
    assert first.conversation.images[0].endswith("artwork/images/10002.jpg") and first.reference == "yes"
    assert text_of(first.conversation.messages[-1]["content"]) == "Is this artwork red? Please answer yes or no."
    assert [i.meta["pair"] for i in task.items[:2]] == ["artwork/10002"] * 2



def test_mme_found_one_folder_down(tmp_path):
    """Pointing at the folder the release was unpacked into (one more level, as its zip nests it)."""
    write_mme(tmp_path / "download")
    assert detect_layout(str(tmp_path / "download")) == "mme"
    assert len(load_task(str(tmp_path / "download")).items) == 8


def test_mme_hugging_face_copy(tmp_path):
    folder = write_mme_parquet(tmp_path)
    assert detect_layout(str(folder)) == "mme"
    task = load_task(str(folder))
    assert [i.meta["category"] for i in task.items] == ["color", "color", "code_reasoning", "code_reasoning"]
    assert [i.reference for i in task.items] == ["yes", "no", "yes", "no"]
    assert task.items[0].meta["pair"] == task.items[1].meta["pair"] == "color/000000006471.jpg"
    assert load_image(task.items[2].conversation.images[0]).getpixel((0, 0)) == (40, 70, 220)


def test_textvqa_and_vqav2_read_their_answers_and_images(layouts):
    tv = load_task(str(layouts["textvqa"]))
    assert [len(i.answers) for i in tv.items] == [10, 10, 10]
    assert tv.items[1].reference == "three" and tv.items[1].conversation.images[0].endswith("train_images/"
                                                                                          "001a1b2c3d4e5f6.jpg")
    assert text_of(tv.items[0].conversation.messages[-1]["content"]).startswith("what does the sign 0 say?\n")
    vq = load_task(str(layouts["vqav2"]))
    assert vq.items[1].answers == ["2"] * 4 + ["two"] * 2 + ["3"] * 4
    assert vq.items[0].conversation.images[0].endswith("val2014/COCO_val2014_000000000042.jpg")
    by_questions = load_task(f"vqav2:{layouts['vqav2'].with_name('v2_OpenEnded_mscoco_val2014_questions.json')}")
    assert [i.answers for i in by_questions.items] == [i.answers for i in vq.items]


def test_mcq_rows_of_both_forms(layouts):
    task = load_task(str(layouts["mcq"]))
    sky, grass = task.items
    assert sky.choices == ["red", "blue", "green"] and sky.reference == "blue"
    assert grass.choices == ["A", "B"] and grass.reference == "B"
    assert text_of(grass.conversation.messages[-1]["content"]) == "Grass colour?\nA. red\nB. green"


def test_limit_keeps_mme_pairs_whole(layouts):
    task = load_task(str(layouts["mme"]), limit=3)
    assert len(task.items) == 2 and {i.meta["pair"] for i in task.items} == {"artwork/10002"}
    assert len(load_task(str(layouts["qa"]), limit=1).items) == 1


def test_task_names_are_unique(layouts):
    names = [t.name for t in load_tasks([str(layouts["qa"]), f"qa:{layouts['qa']}", str(layouts["mme"])])]
    assert names == ["mine", "qa_mine", "mme"]


def test_bad_rows_name_file_line_and_field(tmp_path, layouts):
    bad = write_mcq(tmp_path, [{"messages": [{"role": "user", "content": "Sky?"},
                                             {"role": "assistant", "content": "purple"}],
                                "choices": ["red", "blue"]}], name="bad.jsonl")
    with pytest.raises(DataError, match=r"bad.jsonl:1: choices: the reply 'purple' is not one of"):
        load_task(f"mcq:{bad}")
    txt = layouts["mme"] / "color" / "000000006471.txt"
    saved = txt.read_text()
    try:
        txt.write_text("Is it red?\tMaybe\n")
        with pytest.raises(DataError, match=r"000000006471.txt:1: expected 'question<TAB>Yes'"):
            load_task(str(layouts["mme"]))
    finally:
        txt.write_text(saved)
    missing = tmp_path / "tv" / "TextVQA_0.5.1_val.json"
    missing.parent.mkdir()
    missing.write_text(json.dumps({"data": [{"question": "q", "image_id": "nope", "answers": ["a"] * 10}]}))
    with pytest.raises(DataError, match=r"TextVQA_0.5.1_val.json:0: image_id: image nope.jpg not found"):
        load_task(str(missing))


def test_names_not_on_this_machine_say_how_to_point_at_a_local_copy(tmp_path):
    with pytest.raises(ConfigError, match=r"mme benchmark cannot be downloaded here.*--eval_dataset mme:/path/to/"):
        load_task("MME")
    with pytest.raises(ConfigError, match=r"textvqa.*does not exist; expected TextVQA_0.5.1_val.json"):
        load_task(f"textvqa:{tmp_path / 'nothing.json'}")
    with pytest.raises(ConfigError, match=r"cannot be fetched from the hub here.*--local-dir DIR\) and pass "
                                          r"--eval_dataset qa:DIR"):
        load_task("someone/some-eval-set")
    with pytest.raises(ConfigError, match="does not exist"):
        load_task(str(tmp_path / "missing.jsonl"))
