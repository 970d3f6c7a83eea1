"""Crash safety with packed and padding-free batches: a SIGKILL mid-step resumes to bitwise-identical weights."""

from __future__ import annotations

import signal

import pytest
from safetensors.torch import load_file
from test_resume import ADAPTER, pointed, run_child, train_args, write_data

from tailorkit.cli import parse
from tailorkit.errors import ConfigError
from tailorkit.train.sft import sft

# 16 samples of 41 tokens: packed two to a row of 96 tokens, 8 rows, batch 1 x accumulation 2 = 4 steps an epoch;
# padding-free keeps batch 2 x accumulation 2 = 4 steps an epoch. Two epochs: 8 steps, a checkpoint every 2.
BATCHING = {
    "packing": ["--packing", "true", "--packing_length", "96", "--per_device_train_batch_size", "1"],
    "padding_free": ["--padding_free", "true"],
}


@pytest.mark.slow
@pytest.mark.parametrize("batching", sorted(BATCHING))
def test_killed_mid_step_resumes_to_bitwise_identical_weights(batching, tiny_text_dir, tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    extra = BATCHING[batching]
    expected = sft(parse("sft", train_args(tiny_text_dir, data, tmp_path / "ref", *extra)))
    args = train_args(tiny_text_dir, data, tmp_path / "run", *extra)

    r = run_child("kill_mid_step", 7, args)  # SIGKILL between the micro-batches of step 7 (second epoch)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert pointed(tmp_path / "run") == "checkpoint-6"

    got = sft(parse("sft", [*args, "--resume_from_checkpoint", "last"]))
    want, have = load_file(expected.final_dir / ADAPTER), load_file(got.final_dir / ADAPTER)
    assert have.keys() == want.keys()
    unequal = [k for k in want if not (have[k] == want[k]).all()]
    assert not unequal, f"resumed {batching} weights differ from the uninterrupted run in {unequal}"
    assert got.summary.steps == expected.summary.steps == 8
    assert got.summary.tokens_seen == expected.summary.tokens_seen

    # The fingerprint covers the encoded samples before packing: other content under the same name is refused.
    write_data(data, offset=1)
    with pytest.raises(ConfigError, match="training data: the encoded samples differ"):
        sft(parse("sft", [*train_args(tiny_text_dir, data, tmp_path / "other", *extra),
                          "--resume_from_checkpoint", str(tmp_path / "run" / "checkpoint-4")]))
