"""--external_plugins / --custom_register_path: one plugin file registers a row preprocessor, a chat template, a
loss and a callback (tailorkit.plugins), and each has an effect that can fail; GRPO rewards come from the same
loader."""

from __future__ import annotations

import json
import math

import pytest

from helpers import write_jsonl
from tailorkit.config import SftConfig, build_config
from tailorkit.data.encode import IGNORE
from tailorkit.errors import ConfigError, DataError
from tailorkit.plugins import load_plugins

PLUGIN = '''
import json
from pathlib import Path

from transformers import TrainerCallback

TEMPLATE = ("{% for m in messages %}{{ '### ' + m['role'] + ': ' + m['content'] + '<|im_end|>' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '### assistant: ' }}{% endif %}")


def to_messages(row):
    """This dataset's own layout: {"question": ..., "answer": ...}; the answer is written in capitals."""
    if row.get("broken"):
        raise KeyError("question")
    return {"messages": [{"role": "user", "content": row["question"]},
                         {"role": "assistant", "content": row["answer"].upper()}]}


def doubled(logits, labels, num_items):
    from tailorkit.train.losses import sft_loss
    return 2 * sft_loss(logits, labels, num_items)


class Seen(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        Path(args.output_dir, "plugin_saw.json").write_text(json.dumps({"steps": state.global_step}))


def shout_reward(completions, **columns):
    return [float(c.isupper()) for c in completions]


def register(plugin):
    plugin.preprocessor(to_messages)
    plugin.template("hashes", TEMPLATE)
    plugin.loss(doubled)
    plugin.callback(Seen)
    plugin.reward("shouting", shout_reward)
'''


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "my_plugin.py"
    path.write_text(PLUGIN)
    return path


def _rows(n: int = 4) -> list[dict]:
    return [{"question": f"Say {w}", "answer": w} for w in ("red", "blue", "green", "yellow")[:n]]


def _cfg(model_dir, tmp_path, plugin_file, **over) -> SftConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp_path / "raw.jsonl", _rows())
    values = {"model": str(model_dir), "dataset": [str(data)], "torch_dtype": "float32", "max_steps": 1,
              "per_device_train_batch_size": 4, "logging_steps": 1, "save_strategy": "no",
              "output_dir": str(tmp_path / "out"), "custom_register_path": [str(plugin_file)], **over}
    return build_config(SftConfig, values)


def test_one_loader_gives_every_extension(plugin_file):
    from tailorkit.train.rewards import load_plugins as reward_functions

    plugins = load_plugins([str(plugin_file)])
    assert [fn.__name__ for _, fn in plugins.preprocessors] == ["to_messages"]
    assert "### assistant" in plugins.templates["hashes"] and plugins.loss.__name__ == "doubled"
    assert type(plugins.callbacks[0]).__name__ == "Seen"
    assert {"shouting", "shout_reward", "to_messages"} <= set(plugins.functions)  # public functions stay rewards
    assert reward_functions([str(plugin_file)])["shouting"](["LOUD", "quiet"]) == [1.0, 0.0]
    assert load_plugins([str(plugin_file)]).callbacks[0] is not plugins.callbacks[0]  # fresh per run


def test_preprocessor_changes_the_encoded_rows(tiny_text_dir, tmp_path, plugin_file):
    from tailorkit.train.recipe import prepare

    run = prepare(_cfg(tiny_text_dir, tmp_path, plugin_file, template="hashes"), "sft")
    tok = run.bundle.tokenizer
    replies = sorted(tok.decode([t for t in s.labels if t != IGNORE]) for s in run.train_set)
    assert replies == ["BLUE<|im_end|>", "GREEN<|im_end|>", "RED<|im_end|>", "YELLOW<|im_end|>"]
    assert tok.decode(run.train_set[0].input_ids).startswith("### user: Say ")  # the plugin's template
    without = build_config(SftConfig, {"model": str(tiny_text_dir), "dataset": [str(tmp_path / "raw.jsonl")],
                                       "output_dir": str(tmp_path / "out2")})
    with pytest.raises(DataError, match="raw.jsonl:1: messages: row has none of the keys"):
        prepare(without, "sft")  # the same file without the plugin is not a layout tailorkit reads


def test_a_failing_preprocessor_names_the_row(tiny_text_dir, tmp_path, plugin_file):
    from tailorkit.train.recipe import prepare

    cfg = _cfg(tiny_text_dir, tmp_path, plugin_file)
    write_jsonl(tmp_path / "raw.jsonl", [*_rows(2), {"broken": True}])
    with pytest.raises(DataError, match=r"raw.jsonl:3: preprocessor to_messages of .*my_plugin.py failed: KeyError"):
        prepare(cfg, "sft")


@pytest.mark.slow
def test_plugin_loss_and_callback_run(tiny_text_dir, tmp_path, plugin_file):
    from tailorkit.train.sft import sft

    with_plugin = sft(_cfg(tiny_text_dir, tmp_path / "a", plugin_file))
    plain = tmp_path / "b"
    plain.mkdir()
    write_jsonl(plain / "chat.jsonl", [{"messages": [{"role": "user", "content": r["question"]},
                                                     {"role": "assistant", "content": r["answer"].upper()}]}
                                       for r in _rows()])
    reference = sft(build_config(SftConfig, {"model": str(tiny_text_dir), "dataset": [str(plain / "chat.jsonl")],
                                             "torch_dtype": "float32", "max_steps": 1, "per_device_train_batch_size": 4,
                                             "logging_steps": 1, "save_strategy": "no",
                                             "output_dir": str(plain / "out")}))
    loss = [r["loss"] for r in with_plugin.log_history if "loss" in r][0]
    base = [r["loss"] for r in reference.log_history if "loss" in r][0]
    assert math.isclose(loss, 2 * base, rel_tol=1e-4), (loss, base)  # step 1: same weights, the plugin's loss
    assert json.loads((with_plugin.output_dir / "plugin_saw.json").read_text()) == {"steps": 1}


def test_plugin_loss_is_refused_for_rlhf(tiny_text_dir, tmp_path, plugin_file):
    from tailorkit.train.recipe import run_plugins

    with pytest.raises(ConfigError, match="replaces the sft/pt token loss; rlhf_type dpo has its own"):
        run_plugins(_cfg(tiny_text_dir, tmp_path, plugin_file), "dpo")


def test_plugin_loss_is_refused_with_sequence_parallel(tiny_text_dir, tmp_path, plugin_file):
    from tailorkit.train.recipe import run_plugins

    cfg = _cfg(tiny_text_dir, tmp_path, plugin_file)
    cfg.dist.sequence_parallel_size = 2  # Ulysses computes each rank's share of the loss itself
    with pytest.raises(ConfigError, match="needs the full logits; --sequence_parallel_size computes"):
        run_plugins(cfg, "sft")


def test_plugin_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def register(plugin):\n    plugin.template('x', 'no template here')\n")
    with pytest.raises(ConfigError, match="bad.py: template 'x' must be the jinja text"):
        load_plugins([str(bad)])
    with pytest.raises(ConfigError, match="external_plugins: .*missing.py does not exist"):
        load_plugins([str(tmp_path / "missing.py")])
    (tmp_path / "boom.py").write_text("raise RuntimeError('no')\n")
    with pytest.raises(ConfigError, match="importing .*boom.py failed: RuntimeError: no"):
        load_plugins([str(tmp_path / "boom.py")])
