"""The bundled skewed-length dataset: sft conversations whose encoded lengths are log-uniform in [32, 2048].

Deterministic for a seed and a tokenizer: words are chosen among those that are a single token of
the tokenizer both with and without a leading space, so a conversation's encoded length is the
chat template's fixed overhead plus its word count. Run as a script to write the jsonl:

    python bench/skewed_data.py --model DIR --out skewed.jsonl [--samples 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

CANDIDATES = ("the quick brown fox jumps over lazy dog cat story tell me a and is are of to in red green blue "
              "yellow circle square triangle shape colour picture answer with one word hello how you fine thank "
              "what this describe star cross purple orange yes no true false").split()


def single_token_words(tokenizer) -> list[str]:
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [w for w in CANDIDATES if len(enc(w)) == 1 and len(enc(" " + w)) == 1]


def template_overhead(tokenizer) -> int:
    """Tokens a one-word-question, one-word-answer conversation has beyond its two words."""
    words = single_token_words(tokenizer)
    conv = [{"role": "user", "content": words[0]}, {"role": "assistant", "content": words[0]}]
    text = tokenizer.apply_chat_template(conv, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) - 2


def skewed_rows(tokenizer, n: int, *, seed: int = 0, low: int = 32, high: int = 2048) -> list[dict]:
    """``n`` conversations with target encoded lengths log-uniform in [low, high]; replies are 10-30% of it."""
    rng = random.Random(seed)
    words, overhead = single_token_words(tokenizer), template_overhead(tokenizer)
    rows = []
    for _ in range(n):
        target = int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))
        body = max(target - overhead, 2)
        reply = max(1, int(body * rng.uniform(0.1, 0.3)))
        say = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
        rows.append({"messages": [{"role": "user", "content": say(body - reply)},
                                  {"role": "assistant", "content": say(reply)}]})
    return rows


def write(tokenizer, out: str | Path, n: int, seed: int = 0) -> Path:
    out = Path(out)
    with out.open("w") as f:
        for row in skewed_rows(tokenizer, n, seed=seed):
            f.write(json.dumps(row) + "\n")
    return out


if __name__ == "__main__":
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model directory whose tokenizer sets the lengths")
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(write(AutoTokenizer.from_pretrained(a.model), a.out, a.samples, a.seed))
