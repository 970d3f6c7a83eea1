"""TextVQA / VQAv2: the official answer normalisation and VQA accuracy, and readers of their released files.

VQA accuracy of a reply is min(#annotators who gave it / 3, 1), averaged over the 10 leave-one-out sets
of 9 annotators, after the standard answer processing of reply and annotations alike (lower case,
punctuation, number words to digits, articles dropped, contractions restored), as the EvalAI / TextVQA
(m4c) evaluator computes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import DataError

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # a period not followed by a digit (kept in "1.5")
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
# Appended to TextVQA/VQAv2 questions, as LLaVA, Qwen-VL and lmms-eval prompt them.
VQA_PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        # a mark next to a space, or anywhere in a number like 1,000, is removed; otherwise it splits words
        if p + " " in text or " " + p in text or _DIGIT_COMMA.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(text: str) -> str:
    """The standard VQA answer processing (EvalAI): '  Two Dogs.' -> '2 dogs'."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def vqa_accuracy(response: str, answers: list[str]) -> float:
    """min(#matching annotators / 3, 1) averaged over every leave-one-annotator-out subset."""
    pred = normalize_answer(response)
    gts = [normalize_answer(a) for a in answers]
    if not gts:
        return 0.0
    accs = []
    for i in range(len(gts)):
        matching = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        accs.append(min(1.0, matching / 3))
    return sum(accs) / len(accs)


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read JSON: {e}", source=str(path)) from None


def looks_like_textvqa(data) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("data"), list) and bool(data["data"])
            and isinstance(data["data"][0], dict) and "image_id" in data["data"][0] and "question" in data["data"][0])


def looks_like_vqav2(data) -> bool:
    return isinstance(data, dict) and (isinstance(data.get("annotations"), list)
                                       or isinstance(data.get("questions"), list))


def textvqa_records(path: Path) -> list[dict]:
    """(question, answers, image, line) of a TextVQA json (TextVQA_0.5.1_val.json): images are
    <image_id>.jpg in train_images/ (train and val) or test_images/ next to the json."""
    data = read_json(path)
    if not looks_like_textvqa(data):
        raise DataError("not a TextVQA file: expected {\"data\": [{\"question\", \"image_id\", \"answers\"}, ...]}",
                        source=str(path), fix="point --eval_dataset textvqa: at TextVQA_0.5.1_val.json")
    folders = [path.parent / d for d in ("train_images", "train_val_images/train_images", "test_images", "images")]
    folders.append(path.parent)
    out = []
    for i, row in enumerate(data["data"]):
        answers = row.get("answers")
        if not isinstance(answers, list) or not answers:
            raise DataError("no 'answers' list (the test split has no answers; evaluate on val)", source=str(path),
                            line=i, field="answers")
        image = _find_image(folders, f"{row['image_id']}.jpg", path, i)
        out.append({"question": row["question"], "answers": [str(a) for a in answers], "image": image, "line": i})
    return out


def vqav2_records(path: Path) -> list[dict]:
    """(question, answers, image, line) of VQAv2: the annotations file (v2_mscoco_val2014_annotations.json)
    or the questions file, each found from the other by the official names; images in val2014/ or
    train2014/ (COCO_val2014_000000xxxxxx.jpg) next to the files or one folder up."""
    ann_path, q_path = _vqav2_pair(path)
    annotations = read_json(ann_path).get("annotations", [])
    questions = {q["question_id"]: q for q in read_json(q_path).get("questions", [])}
    split = "train2014" if "train2014" in ann_path.name else "val2014"
    folders = [d / split for d in (ann_path.parent, ann_path.parent.parent)] + [ann_path.parent]
    out = []
    for i, ann in enumerate(annotations):
        q = questions.get(ann.get("question_id"))
        if q is None:
            raise DataError(f"question_id {ann.get('question_id')} has no question in {q_path}", source=str(ann_path),
                            line=i, field="question_id")
        name = f"COCO_{split}_{int(ann['image_id']):012d}.jpg"
        out.append({"question": q["question"], "answers": [str(a["answer"]) for a in ann["answers"]],
                    "image": _find_image(folders, name, ann_path, i), "line": i})
    return out


def _vqav2_pair(path: Path) -> tuple[Path, Path]:
    name = path.name
    if "annotations" in name:
        other = path.with_name(name.replace("mscoco", "OpenEnded_mscoco").replace("annotations", "questions"))
        pair = (path, other)
    else:
        other = path.with_name(name.replace("OpenEnded_mscoco", "mscoco").replace("questions", "annotations"))
        pair = (other, path)
    if not pair[0].is_file() or not pair[1].is_file():
        raise DataError(f"VQAv2 needs both the questions and the annotations file; {other.name} is not next to it",
                        source=str(path), fix="keep v2_OpenEnded_mscoco_<split>_questions.json and "
                        "v2_mscoco_<split>_annotations.json in one folder")
    return pair


def _find_image(folders: list[Path], name: str, source: Path, line: int) -> str:
    for folder in folders:
        if (folder / name).is_file():
            return str(folder / name)
    raise DataError(f"image {name} not found in {', '.join(str(f) for f in folders)}", source=str(source), line=line,
                    field="image_id", fix="unpack the dataset's images next to its json, as released")
