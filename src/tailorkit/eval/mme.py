"""MME: the released folder layout, its yes/no answer parsing and its scores (acc, acc+, perception, cognition).

The release (MME_Benchmark_release_version/, possibly with an inner MME_Benchmark/) holds one folder per
category. Either ``images/`` + ``questions_answers_YN/<stem>.txt``, or images and ``<stem>.txt`` side by
side. Each txt holds two lines ``question<TAB>Yes|No`` about the one image. The Hugging Face copy
(lmms-lab/MME, parquet rows with question_id, image, question, answer, category) reads too. As MME's eval_tool computes
them: acc = questions answered right, acc+ = images with both questions right, a category's score =
100 * (acc + acc+), perception = the sum over its 10 categories, cognition over its 4.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..data.sources import iter_rows
from ..errors import DataError

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")
_SKIP = {"eval_tool", "__MACOSX"}


def parse_yes_no(response: str) -> str:
    """MME's parsing: 'yes'/'no', else whichever of them starts the reply (first 4 characters), else 'other'."""
    text = response.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def _qa_files(category: Path) -> tuple[list[Path], Path]:
    """The category's question files and the folder its images are in."""
    split = category / "questions_answers_YN"
    if split.is_dir():
        return sorted(split.glob("*.txt")), category / "images"
    return sorted(category.glob("*.txt")), category


def category_dirs(root: Path) -> list[Path]:
    """The category folders under ``root`` (or under its single inner folder, as the release nests them)."""
    found = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name not in _SKIP and _qa_files(d)[0]]
    if found:
        return found
    inner = [d for d in root.iterdir() if d.is_dir() and d.name not in _SKIP]
    return category_dirs(inner[0]) if len(inner) == 1 else []


def looks_like_mme(root: Path) -> bool:
    return root.is_dir() and any(d.name in PERCEPTION + COGNITION or (d / "questions_answers_YN").is_dir()
                                 for d in category_dirs(root))


def mme_records(root: Path) -> list[dict]:
    """Every question as {category, image, question, answer ('yes'/'no'), pair (image key), source, line}."""
    categories = category_dirs(root)
    if not categories:
        raise DataError("no MME category folder (with questions_answers_YN/ or <image>.txt files) found",
                        source=str(root), fix="point --eval_dataset mme: at MME_Benchmark_release_version/")
    out = []
    for category in categories:
        files, image_dir = _qa_files(category)
        for txt in files:
            image = _image_for(image_dir, txt)
            for line, text in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
                if not text.strip():
                    continue
                question, sep, answer = text.rstrip("\n").rpartition("\t")
                if not sep or answer.strip().lower() not in ("yes", "no"):
                    raise DataError("expected 'question<TAB>Yes' or 'question<TAB>No'", source=str(txt), line=line,
                                    fix="keep the MME release's question files unchanged")
                out.append({"category": category.name, "image": str(image), "question": question.strip(),
                            "answer": answer.strip().lower(), "pair": f"{category.name}/{txt.stem}",
                            "source": str(txt), "line": line})
    return out


def _image_for(folder: Path, txt: Path) -> Path:
    for ext in _IMAGE_EXT:
        if (folder / f"{txt.stem}{ext}").is_file():
            return folder / f"{txt.stem}{ext}"
    raise DataError(f"no image {txt.stem}.jpg/.png in {folder}", source=str(txt),
                    fix="keep each question file next to (or in images/ beside) its image, as released")


_ROW_KEYS = {"question_id", "question", "answer", "category", "image"}


def is_mme_row(row) -> bool:
    """A row of the Hugging Face copy (lmms-lab/MME parquet: question_id, image, question, answer, category)."""
    return isinstance(row, dict) and _ROW_KEYS <= row.keys() and str(row["answer"]).strip().lower() in ("yes", "no")


def _parquet_files(path: str) -> list[Path]:
    p = Path(path)
    return [p] if p.is_file() else sorted(p.rglob("*.parquet"))


def looks_like_mme_rows(path: str) -> bool:
    files = _parquet_files(path)
    if not files or files[0].suffix != ".parquet":
        return False
    return is_mme_row(next((row for _, row in iter_rows(str(files[0]))), None))


def mme_row_records(path: str) -> list[dict]:
    """Records of the Hugging Face copy (its parquet files, e.g. data/test-0000k-of-0000n.parquet); its
    question_id ('OCR/0001.jpg') names the image pair."""
    files = _parquet_files(path)
    if not files:
        raise DataError("no MME category folders and no parquet files found", source=path,
                        fix="point --eval_dataset mme: at MME_Benchmark_release_version/ or the lmms-lab/MME copy")
    out = []
    for file in files:
        for line, row in iter_rows(str(file)):
            if not is_mme_row(row):
                raise DataError(f"not an MME row: needs {', '.join(sorted(_ROW_KEYS))} with a Yes/No answer",
                                source=str(file), line=line, fix="point --eval_dataset mme: at the MME release "
                                "folder or the lmms-lab/MME copy")
            out.append({"category": str(row["category"]), "image": row["image"], "pair": str(row["question_id"]),
                        "question": str(row["question"]).strip(), "answer": str(row["answer"]).strip().lower(),
                        "source": str(file), "line": line})
    return out


def mme_scores(records: list[dict], correct: list[bool]) -> dict[str, float]:
    """acc, acc+ and score per category (``<category>/acc`` ...), and the perception / cognition totals over
    the categories present."""
    by_cat: dict[str, list[bool]] = defaultdict(list)
    by_pair: dict[str, list[bool]] = defaultdict(list)
    cat_of_pair = {}
    for rec, ok in zip(records, correct):
        by_cat[rec["category"]].append(ok)
        by_pair[rec["pair"]].append(ok)
        cat_of_pair[rec["pair"]] = rec["category"]
    out: dict[str, float] = {}
    scores = {}
    for cat, oks in by_cat.items():
        pairs = [all(v) for p, v in by_pair.items() if cat_of_pair[p] == cat]
        acc, acc_plus = sum(oks) / len(oks), sum(pairs) / len(pairs)
        scores[cat] = 100 * (acc + acc_plus)
        out.update({f"{cat}/acc": acc, f"{cat}/acc+": acc_plus, f"{cat}/score": scores[cat]})
    out["acc"] = sum(correct) / len(correct)
    for name, cats in (("perception", PERCEPTION), ("cognition", COGNITION)):
        if any(c in scores for c in cats):
            out[name] = sum(scores.get(c, 0.0) for c in cats)
    return out
