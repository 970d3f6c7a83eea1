"""Text metrics of a reply against its reference: exact match, contains, ROUGE-L, BLEU-4, character accuracy.

Each returns a number in [0, 1] for one sample; a task's value is the mean over its samples.
"""

from __future__ import annotations

import math
import re
from collections import Counter

# A final punctuation mark does not make an answer wrong ("Red." is "red"), in Latin or CJK scripts.
_FINAL_PUNCT = ".,!?;:。，！？；：、…"
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
# CJK characters are tokens of their own (no spaces between words); other words are runs of letters/digits.
_TOKEN_RE = re.compile(f"[{_CJK}]|(?:(?![{_CJK}])[^\\W_])+")


def normalize(text: str) -> str:
    """Lower case, runs of whitespace as one space, no surrounding space or final punctuation."""
    text = " ".join(text.lower().split())
    return text.rstrip(_FINAL_PUNCT).rstrip()


def exact_match(response: str, reference: str) -> float:
    return float(normalize(response) == normalize(reference))


def contains(response: str, reference: str) -> float:
    """1 when the normalised reference appears inside the normalised reply."""
    ref = normalize(reference)
    return float(bool(ref) and ref in normalize(response))


def tokens(text: str) -> list[str]:
    """Lower-cased words (CJK characters one by one); punctuation is dropped."""
    return _TOKEN_RE.findall(text.lower())


def _lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(response: str, reference: str) -> float:
    """ROUGE-L F1 over tokens: the longest common subsequence against both lengths."""
    hyp, ref = tokens(response), tokens(reference)
    lcs = _lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def bleu4(response: str, reference: str) -> float:
    """Sentence BLEU-4 (uniform weights, brevity penalty) with Lin & Och's add-one smoothing of the 2- to
    4-gram precisions, so a short reply that shares words but no 4-gram does not score 0."""
    hyp, ref = tokens(response), tokens(reference)
    if not hyp or not ref:
        return 0.0
    log_sum = 0.0
    for n in range(1, 5):
        hyp_grams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        ref_grams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        matched = sum(min(c, ref_grams[g]) for g, c in hyp_grams.items())
        total = sum(hyp_grams.values())
        if n == 1 and matched == 0:
            return 0.0
        if n > 1:
            matched, total = matched + 1, total + 1
        log_sum += math.log(matched / total) / 4
    brevity = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return brevity * math.exp(log_sum)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions of characters)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def char_accuracy(response: str, reference: str) -> float:
    """OCR accuracy: 1 - character edit distance / reference length (at least 0), on the stripped texts
    (case and inner spacing count)."""
    ref = reference.strip()
    if not ref:
        return float(not response.strip())
    return max(0.0, 1 - edit_distance(response.strip(), ref) / len(ref))


TEXT_METRICS = {"exact_match": exact_match, "contains": contains, "rouge_l": rouge_l, "bleu4": bleu4,
                "char_acc": char_accuracy}


def text_scores(response: str, reference: str) -> dict[str, float]:
    """Every text metric of one reply."""
    return {name: fn(response, reference) for name, fn in TEXT_METRICS.items()}


def mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """Per-metric mean over samples (metrics missing from a sample are averaged over the others)."""
    names = list(dict.fromkeys(k for s in scores for k in s))
    out = {}
    for name in names:
        values = [s[name] for s in scores if name in s]
        out[name] = sum(values) / len(values)
    return out
