"""Broken data: each case fails with a message naming the file, the line, the field and a fix."""

from __future__ import annotations

import json

import pytest

from tailorkit.data.dataset import encode_all, load_conversations
from tailorkit.data.encode import encode
from tailorkit.errors import DataError, TooLongError
from tailorkit.models.load import load_processor

GOOD = {"messages": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "yes"}]}


def write(tmp_path, lines: list, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def user_image(text="<image>What colour is the shape?"):
    return [{"role": "user", "content": text}, {"role": "assistant", "content": "red"}]


CASES = {
    "invalid_json": ('{"messages": [', "invalid JSON", None),
    "missing_messages": ({"prompt": "hi"}, "row has none of the keys", "messages"),
    "roles_out_of_order": ({"messages": [{"role": "assistant", "content": "yes"},
                                         {"role": "user", "content": "Hello!"}]},
                           "role 'assistant' where 'user' was expected", "messages[0].role"),
    "empty_reply": ({"messages": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "  "}]},
                    "the assistant reply is empty", "messages[1].content"),
    "missing_image": ({"messages": user_image(), "images": ["imgs/nope.png"]}, "nope.png does not exist", "images"),
    "more_tags_than_images": ({"messages": user_image("<image><image>What colour is the shape?"),
                               "images": ["imgs/a.png"]}, "'images' has 1 entries but the messages contain 2",
                              "images"),
    "more_images_than_tags": ({"messages": user_image(), "images": ["imgs/a.png", "imgs/a.png"]},
                              "'images' has 2 entries but the messages contain 1", "images"),
    "video_tag_without_video": ({"messages": user_image("<video>What is it?")},
                                "'videos' has 0 entries but the messages contain 1 <video>", "videos"),
    "bad_sharegpt_role": ({"conversations": [{"from": "robot", "value": "hi"}]}, "'from' is 'robot'",
                          "conversations[0].from"),
    "kto_label_not_bool": ({**GOOD, "label": "yes"}, "KTO 'label' must be true or false", "label"),
    "rejected_equals_chosen": ({**GOOD, "rejected_response": "yes"}, "rejected reply equals the chosen", "rejected_response"),
    "rejected_prompt_differs": ({**GOOD, "rejected_messages": [{"role": "user", "content": "Other"},
                                                               {"role": "assistant", "content": "no"}]},
                                "prompt differs from the chosen", "rejected_messages"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_row_names_file_line_and_field(case, tmp_path, write_png):
    write_png(tmp_path / "imgs" / "a.png", 0)
    bad, problem, field = CASES[case]
    path = write(tmp_path, [GOOD, GOOD, bad])  # the broken row is on line 3
    with pytest.raises(DataError) as info:
        load_conversations([path])
    err = info.value
    assert str(err).startswith(f"{path}:3: "), str(err)
    assert problem in str(err)
    assert err.field == field
    if field:
        assert f":3: {field}: " in str(err)


def test_all_broken_rows_are_reported_together(tmp_path):
    path = write(tmp_path, [GOOD, "{oops", GOOD, {"messages": []}])
    with pytest.raises(DataError) as info:
        load_conversations([path])
    text = str(info.value)
    assert "2 rows have problems" in text
    assert f"{path}:2: invalid JSON" in text and f"{path}:4: messages:" in text


def test_broken_rows_in_csv_name_the_csv_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('query,response\nHello!,yes\n"multi\nline",yes\nHello!,\n')
    with pytest.raises(DataError) as info:
        load_conversations([str(path)])
    assert str(info.value).startswith(f"{path}:5: response: is missing")


def test_corrupt_image_fails_at_decode_naming_the_row(tmp_path, tiny_vl_dir):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG not really an image")
    path = write(tmp_path, [GOOD, {"messages": user_image(), "images": ["imgs/bad.png"]}])
    convs = load_conversations([path])  # the cheap check only sees that the file exists
    with pytest.raises(DataError) as info:
        encode(convs[1], load_processor(str(tiny_vl_dir)))
    assert str(info.value).startswith(f"{path}:2: images: cannot decode image")
    assert "replace or remove the corrupt file" in str(info.value)


def test_preference_and_kto_rows_parse(tmp_path):
    rows = [{**GOOD, "rejected_response": "no"},
            {"messages": GOOD["messages"], "rejected_messages": [GOOD["messages"][0],
                                                                 {"role": "assistant", "content": "no"}]},
            {"query": "Hello!", "response": "yes", "label": False},
            {**GOOD, "label": True}]
    convs = load_conversations([write(tmp_path, rows)])
    for conv in convs[:2]:
        assert conv.rejected == [GOOD["messages"][0], {"role": "assistant", "content": "no"}]
        assert conv.label is None
    assert [c.label for c in convs[2:]] == [False, True] and convs[2].rejected is None


@pytest.fixture
def long_rows(tmp_path, write_png):
    write_png(tmp_path / "imgs" / "a.png", 0)
    text = "The quick brown fox jumps over the lazy dog. " * 6
    rows = [GOOD,
            {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "yes"}]},
            {"messages": [{"role": "user", "content": "<image>" + text}, {"role": "assistant", "content": "red"}],
             "images": ["imgs/a.png"]}]
    return load_conversations([write(tmp_path, rows)])


def test_over_long_sample_under_each_strategy(long_rows, tiny_vl_dir):
    proc = load_processor(str(tiny_vl_dir))
    lengths = [len(encode(c, proc)) for c in long_rows]
    limit = lengths[0] + 10
    assert lengths[1] > limit and lengths[2] > limit
    with pytest.raises(TooLongError) as info:
        encode_all(long_rows, proc, max_length=limit, truncation="raise")
    assert str(info.value).startswith(f"{long_rows[1].source}:2: messages: encoded length {lengths[1]}")

    kept, report = encode_all(long_rows, proc, max_length=limit, truncation="delete")
    assert len(kept) == 1 and report.skipped == {"longer than max_length": 2}

    kept, report = encode_all(long_rows, proc, max_length=limit, truncation="left")
    full = encode(long_rows[1], proc)
    assert [len(e) for e in kept] == [lengths[0], limit]
    assert kept[1].input_ids == full.input_ids[-limit:] and kept[1].labels == full.labels[-limit:]
    # cutting the image sample from the left would remove its media span: deleted and counted, never cut
    assert report.truncated == 1 and sum(report.skipped.values()) == 1
    assert "a cut would hit media" in next(iter(report.skipped))

    kept, report = encode_all(long_rows, proc, max_length=limit, truncation="right")
    # from the right both long samples would lose every supervised token (their replies are at the end)
    assert len(kept) == 1 and report.truncated == 0 and sum(report.skipped.values()) == 2


def test_pretraining_rows_from_csv_and_their_errors(tmp_path):
    from tailorkit.data.dataset import load_text_samples

    good = tmp_path / "text.csv"
    good.write_text('text\n"one document"\nanother\n')
    assert [s.text for s in load_text_samples([f"{good}#3"], seed=0)].count("one document") >= 1
    assert len(load_text_samples([f"{good}#3"])) == 3
    bad = write(tmp_path, [{"text": "fine"}, {"text": "  "}, {"body": "x"}], name="text.jsonl")
    with pytest.raises(DataError) as info:
        load_text_samples([bad])
    assert f"{bad}:2: text: 'text' is empty" in str(info.value)
    assert f"{bad}:3: text: pre-training rows need a string 'text'" in str(info.value)
