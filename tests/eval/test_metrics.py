"""Metrics against values computed by hand: exact match, text overlap, VQA accuracy, MME acc / acc+."""

from __future__ import annotations

import pytest

from tailorkit.eval import mme
from tailorkit.eval.metrics import bleu4, char_accuracy, contains, exact_match, mean_scores, rouge_l
from tailorkit.eval.vqa import normalize_answer, vqa_accuracy


@pytest.mark.parametrize("response, reference, expected", [
    ("Red.", "red", 1.0),                 # case and final punctuation
    ("  the  Red\ncar ", "The red car", 1.0),  # runs of whitespace
    ("red car", "red", 0.0),
    ("reds", "red", 0.0),
    ("red!?", "Red", 1.0),
    ("红色。", "红色", 1.0),
])
def test_exact_match_normalises_case_whitespace_and_final_punctuation(response, reference, expected):
    assert exact_match(response, reference) == expected


def test_contains_rouge_bleu_and_char_accuracy_by_hand():
    assert contains("I think it is Red.", "red") == 1.0 and contains("blue", "red") == 0.0
    # LCS of [the cat sat on the mat] and [the cat sat on a mat] is 5 tokens: P = R = 5/6
    assert rouge_l("The cat sat on the mat", "the cat sat on a mat") == pytest.approx(5 / 6)
    # P = 2/2, R = 2/4 -> F = 2PR/(P+R) = 2/3
    assert rouge_l("red car", "a red fast car") == pytest.approx(2 / 3)
    # 1-gram 5/6; add-one smoothed 2-gram (3+1)/(5+1), 3-gram (2+1)/(4+1), 4-gram (1+1)/(3+1); same length: BP 1
    expected = (5 / 6 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25
    assert bleu4("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(expected)
    # shorter reply: brevity penalty exp(1 - 6/5) on a 5-token reply sharing every n-gram
    short = (1 * 5 / 5 * 4 / 4 * 3 / 3) ** 0.25 * 2.718281828459045 ** (1 - 6 / 5)
    assert bleu4("the cat sat on a", "the cat sat on a mat") == pytest.approx(short)
    assert bleu4("dog", "cat") == 0.0
    # one substitution and one deletion over 11 reference characters
    assert char_accuracy("HELL0 WORD", "HELLO WORLD") == pytest.approx(1 - 2 / 11)
    assert char_accuracy("completely different and long", "abc") == 0.0
    assert mean_scores([{"a": 1.0, "b": 0.0}, {"a": 0.0}]) == {"a": 0.5, "b": 0.0}


def test_vqa_answer_normalisation():
    assert normalize_answer("Two Dogs.") == "2 dogs"
    assert normalize_answer("the  Coca-Cola") == "coca cola"
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("3.5") == "3.5"


def test_vqa_accuracy_by_hand():
    assert vqa_accuracy("stop", ["stop"] * 10) == 1.0
    # 3 of 10 annotators agree: leaving out one of them leaves 2 matches (2/3), leaving out another leaves 3 (1)
    assert vqa_accuracy("Red", ["red"] * 3 + ["blue"] * 7) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    # 1 of 10: 1/3 when another annotator is left out, 0 when that one is
    assert vqa_accuracy("blue", ["blue"] + ["red"] * 9) == pytest.approx(9 * (1 / 3) / 10)
    # normalisation on both sides: 'two' = '2' (5 annotators), 'the three' = '3'
    assert vqa_accuracy("Two", ["two"] * 3 + ["2"] * 2 + ["three"] * 5) == 1.0
    assert vqa_accuracy("green", ["red"] * 10) == 0.0


def test_mme_yes_no_parsing():
    assert mme.parse_yes_no("Yes") == "yes" and mme.parse_yes_no("No, it is not.") == "no"
    assert mme.parse_yes_no("yes.") == "yes" and mme.parse_yes_no("The answer is yes") == "other"


def test_mme_acc_plus_counts_an_image_only_when_both_answers_are_right():
    records = [{"category": "color", "pair": "color/1"}, {"category": "color", "pair": "color/1"},
               {"category": "color", "pair": "color/2"}, {"category": "color", "pair": "color/2"},
               {"category": "code_reasoning", "pair": "code/1"}, {"category": "code_reasoning", "pair": "code/1"}]
    correct = [True, True, True, False, True, True]  # the second colour image has one wrong answer
    scores = mme.mme_scores(records, correct)
    assert scores["color/acc"] == pytest.approx(3 / 4)
    assert scores["color/acc+"] == pytest.approx(1 / 2)
    assert scores["color/score"] == pytest.approx(125.0)
    assert scores["code_reasoning/score"] == pytest.approx(200.0)
    assert scores["perception"] == pytest.approx(125.0) and scores["cognition"] == pytest.approx(200.0)
    assert scores["acc"] == pytest.approx(5 / 6)
