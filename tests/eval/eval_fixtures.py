"""Tiny synthetic copies of the benchmark layouts, written as the real releases lay them out (with images).

MME: MME_Benchmark_release_version/<category>/ with images/ + questions_answers_YN/ (artwork) or image and
<stem>.txt side by side (color), plus the release's eval_tool/ folder; TextVQA: TextVQA_0.5.1_val.json
with train_images/<image_id>.jpg; VQAv2: v2_OpenEnded_mscoco_val2014_questions.json,
v2_mscoco_val2014_annotations.json and val2014/COCO_val2014_<id>.jpg.
"""

from __future__ import annotations

import json
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "blue": (40, 70, 220), "green": (30, 170, 60)}


def image(path: Path, colour: str = "red", size: int = 56) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), COLOURS[colour]).save(path)
    return path


def write_mme(root: Path) -> Path:
    """Two categories, two images each, one Yes and one No question per image (8 questions)."""
    release = root / "MME_Benchmark_release_version"
    for stem, colour in (("10002", "red"), ("10049", "blue")):
        image(release / "artwork" / "images" / f"{stem}.jpg", colour)
        (release / "artwork" / "questions_answers_YN").mkdir(parents=True, exist_ok=True)
        (release / "artwork" / "questions_answers_YN" / f"{stem}.txt").write_text(
            f"Is this artwork {colour}? Please answer yes or no.\tYes\n"
            f"Is this artwork green? Please answer yes or no.\tNo\n")
    for stem, colour in (("000000006471", "red"), ("000000015254", "green")):
        image(release / "color" / f"{stem}.jpg", colour)
        (release / "color" / f"{stem}.txt").write_text(
            f"Is there a {colour} square in the image? Please answer yes or no.\tYes\n"
            f"Is there a blue square in the image? Please answer yes or no.\tNo\n")
    (release / "eval_tool" / "Your_Results").mkdir(parents=True)
    (release / "eval_tool" / "Your_Results" / "color.txt").write_text("000000006471.jpg\tIs there ...\tYes\n")
    return release


def write_mme_parquet(root: Path) -> Path:
    """The Hugging Face copy (lmms-lab/MME): data/test-*.parquet rows with the image bytes inside."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for qid, colour in (("color/000000006471.jpg", "red"), ("code_reasoning/0020.png", "blue")):
        encoded = {"bytes": image(root / "png" / f"{colour}.png", colour).read_bytes(), "path": qid.split("/")[1]}
        category = qid.split("/")[0]
        rows += [{"question_id": qid, "image": encoded, "question": f"Is it {colour}? Please answer yes or no.",
                  "answer": "Yes", "category": category},
                 {"question_id": qid, "image": encoded, "question": "Is it green? Please answer yes or no.",
                  "answer": "No", "category": category}]
    folder = root / "lmms-lab-MME"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "test-00000-of-00001.parquet")
    (folder / "README.md").write_text("MME\n")
    return folder


def write_textvqa(root: Path) -> Path:
    """Three questions; answers lists of 10 as released."""
    folder = root / "textvqa"
    rows = []
    for i, (colour, answers) in enumerate([("red", ["stop"] * 10),
                                           ("blue", ["two"] * 3 + ["2"] * 2 + ["three"] * 5),
                                           ("green", ["coca cola"] * 4 + ["coca-cola"] * 6)]):
        image_id = f"00{i}a1b2c3d4e5f6"
        image(folder / "train_images" / f"{image_id}.jpg", colour)
        rows.append({"question": f"what does the sign {i} say?", "image_id": image_id, "image_classes": ["Sign"],
                     "flickr_original_url": "", "flickr_300k_url": "", "image_width": 56, "image_height": 56,
                     "answers": answers, "question_tokens": ["what"], "question_id": 34602 + i, "set_name": "val"})
    path = folder / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps({"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
                                "data": rows}))
    return path


def write_vqav2(root: Path) -> Path:
    """Two questions on two COCO-named images; returns the annotations file."""
    folder = root / "vqav2"
    questions, annotations = [], []
    for i, (image_id, colour, answers) in enumerate([(42, "red", ["yes"] * 10),
                                                     (73, "blue", ["2"] * 4 + ["two"] * 2 + ["3"] * 4)]):
        image(folder / "val2014" / f"COCO_val2014_{image_id:012d}.jpg", colour)
        qid = image_id * 1000 + i
        questions.append({"image_id": image_id, "question": f"question {i}?", "question_id": qid})
        annotations.append({"question_id": qid, "image_id": image_id, "question_type": "what",
                            "answer_type": "other", "multiple_choice_answer": answers[0],
                            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                        for k, a in enumerate(answers)]})
    (folder / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(
        {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "val2014",
         "questions": questions}))
    path = folder / "v2_mscoco_val2014_annotations.json"
    path.write_text(json.dumps({"info": {}, "data_type": "mscoco", "data_subtype": "val2014",
                                "annotations": annotations}))
    return path


def write_user_data(root: Path, rows: list[tuple[str, str, str | None]], name: str = "mine.jsonl") -> Path:
    """An sft jsonl of (question, answer, image colour or None) rows; images next to it."""
    folder = root / "user"
    lines = []
    for i, (question, answer, colour) in enumerate(rows):
        row = {"messages": [{"role": "user", "content": ("<image>" if colour else "") + question},
                            {"role": "assistant", "content": answer}]}
        if colour:
            image(folder / "images" / f"{i}.png", colour)
            row["images"] = [f"images/{i}.png"]
        lines.append(json.dumps(row))
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_mcq(root: Path, rows: list[dict], name: str = "choices.jsonl") -> Path:
    path = root / "mcq" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
