"""Every --truncation_strategy on rlhf rows: pairs, KTO samples and GRPO prompts go through the sft encoder path."""

from __future__ import annotations

import json

import pytest
from helpers import write_jsonl

from tailorkit.cli import parse
from tailorkit.data.dataset import EncodeReport
from tailorkit.data.encode import encode, encode_prompt
from tailorkit.data.formats import Conversation
from tailorkit.data.preference import KtoSample, PromptSample
from tailorkit.data.truncate import UNCUTTABLE
from tailorkit.errors import TooLongError
from tailorkit.models.load import load_processor
from tailorkit.train.kinds import KINDS
from tailorkit.train.recipe import fit, prepare

WORDS = ["cat", "dog", "fox", "story"]
LONG_CHOSEN = "yes thank you, the quick brown fox jumps over the lazy dog"
LONG_REJECTED = "no, the dog is not fine and the cat is not fine"


def _user(w: str) -> dict:
    return {"role": "user", "content": f"Tell me a story about a {w}."}


def _pair(w: str, chosen: str, rejected: str) -> dict:
    return {"messages": [_user(w), {"role": "assistant", "content": chosen}], "rejected_response": rejected}


def _limit(tok) -> int:
    """A max_length every prompt fits in (with a few reply tokens) and every long reply overflows."""
    longest_prompt = max(len(encode_prompt(Conversation([_user(w)]), tok)) for w in WORDS)
    limit = longest_prompt + 5
    for w in WORDS:
        for reply in (LONG_CHOSEN, LONG_REJECTED):
            full = encode(Conversation([_user(w), {"role": "assistant", "content": reply}]), tok)
            assert len(full) > limit + 3  # over-long whichever side is cut
    return limit


def _args(model, data, out, limit, strategy, *extra) -> list[str]:
    return ["--rlhf_type", "dpo", "--model", str(model), "--dataset", str(data), "--output_dir", str(out),
            "--max_length", str(limit), "--truncation_strategy", strategy, "--torch_dtype", "float32",
            "--per_device_train_batch_size", "2", "--max_steps", "2", "--logging_steps", "1", "--save_strategy",
            "no", "--learning_rate", "1e-3", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("side", ["left", "right"])
def test_dpo_cuts_over_long_pairs_and_trains(side, tiny_text_dir, tmp_path):
    tok = load_processor(str(tiny_text_dir))
    limit = _limit(tok)
    data = write_jsonl(tmp_path / "pref.jsonl", [_pair(w, LONG_CHOSEN, LONG_REJECTED) for w in WORDS])
    with pytest.raises(TooLongError, match=r"pref\.jsonl:1: messages: encoded length \d+ exceeds max_length"):
        prepare(parse("rlhf", _args(tiny_text_dir, data, tmp_path / "raise", limit, "raise")), "dpo")

    run = prepare(parse("rlhf", _args(tiny_text_dir, data, tmp_path / "out", limit, side)), "dpo")
    assert (run.report.kept, run.report.truncated, dict(run.report.skipped)) == (len(WORDS), len(WORDS), {})
    for w, pair in zip(WORDS, run.train_set):  # cut, not dropped: each side is its encoding cut on that side
        for enc, reply in ((pair.chosen, LONG_CHOSEN), (pair.rejected, LONG_REJECTED)):
            full = encode(Conversation([_user(w), {"role": "assistant", "content": reply}]), tok).input_ids
            assert enc.input_ids == (full[-limit:] if side == "left" else full[:limit])
            assert enc.num_supervised > 0
    result = fit(run)
    losses = [r["loss"] for r in result.log_history if "loss" in r]
    assert len(losses) == 2 and all(x == x for x in losses)
    assert (result.final_dir / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_dpo_delete_skips_over_long_pairs_and_reports_them(tiny_text_dir, tmp_path, capsys):
    tok = load_processor(str(tiny_text_dir))
    limit = _limit(tok)
    rows = [_pair(w, "yes", "no") for w in WORDS]  # short: kept
    rows += [_pair("cat", LONG_CHOSEN, "no"), _pair("dog", "yes", LONG_REJECTED)]  # one side too long: skipped
    data = write_jsonl(tmp_path / "pref.jsonl", rows)
    result = fit(prepare(parse("rlhf", _args(tiny_text_dir, data, tmp_path / "out", limit, "delete")), "dpo"))
    out = capsys.readouterr().out
    line = f"[tailorkit] end of preprocessing: {len(WORDS)} samples encoded; skipped: 2 longer than max_length"
    assert line in out.splitlines(), out[-2000:]
    assert result.report.kept == len(WORDS) and result.report.skipped == {"longer than max_length": 2}
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["samples_skipped"] == {"longer than max_length": 2}


def test_kto_samples_and_companions_follow_every_strategy(tiny_text_dir):
    tok = load_processor(str(tiny_text_dir))
    limit = _limit(tok)
    short = [KtoSample(Conversation([_user(w), {"role": "assistant", "content": "yes"}]), True) for w in WORDS[:2]]
    long = KtoSample(Conversation([_user("fox"), {"role": "assistant", "content": LONG_CHOSEN}]), False)
    items = [*short, long]  # the sample before `long` gets its long reply as KL companion
    encode_kto = KINDS["kto"].encode
    kept, report = encode_kto(items, tok, max_length=limit, truncation="delete")
    assert len(kept) == 1 and report.skipped == {"longer than max_length": 2}  # `long`, and its neighbour's pair
    kept, report = encode_kto(items, tok, max_length=limit, truncation="left")
    assert len(kept) == 3 and report.truncated == 2 and not report.skipped
    assert all(len(k.sample) <= limit and len(k.kl) <= limit for k in kept)
    with pytest.raises(TooLongError):
        encode_kto(items, tok, max_length=limit, truncation="raise")


def test_grpo_prompts_raise_are_skipped_never_cut(tiny_text_dir):
    tok = load_processor(str(tiny_text_dir))
    short = PromptSample(Conversation([_user("cat")]), {"solution": "yes"})
    long = PromptSample(Conversation([{"role": "user", "content": f"Tell me a story about a {LONG_CHOSEN}."}]), {})
    limit = len(encode_prompt(short.conv, tok))
    encode_prompts = KINDS["grpo"].encode
    for strategy, reason in (("delete", "longer than max_length"), ("left", UNCUTTABLE), ("right", UNCUTTABLE)):
        kept, report = encode_prompts([short, long], tok, max_length=limit, truncation=strategy)
        assert [k.sample for k in kept] == [short] and report.skipped == {reason: 1}, strategy
        assert kept[0].prompt.input_ids == encode_prompt(short.conv, tok).input_ids  # what rollouts start from
    with pytest.raises(TooLongError, match="exceeds max_length"):
        encode_prompts([long], tok, max_length=limit, truncation="raise")
    assert isinstance(report, EncodeReport)
