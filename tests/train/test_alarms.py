"""Each alarm fires on a crafted case and stays silent on a normal run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from tqdm.auto import tqdm
from transformers import TrainerControl, TrainerState

from tailorkit.cli import parse
from tailorkit.errors import TrainingStopped
from tailorkit.train.alarms import CAUSES, SCALER_PATIENCE, AlarmCallback
from tailorkit.train.checkpoint import last_checkpoint
from tailorkit.train.sft import sft


class Run:
    """Drives an AlarmCallback through the events the Trainer sends for one optimizer step."""

    def __init__(self, tmp_path, *, warmup: int = 0, strict: bool = False, patience: int = 3):
        self.model = torch.nn.Linear(4, 2)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.args = SimpleNamespace(get_warmup_steps=lambda n: warmup, lr_scheduler_type="linear")
        self.state, self.control = TrainerState(max_steps=20), TrainerControl()
        self.log = tmp_path / "logging.jsonl"
        self.cb = AlarmCallback(patience=patience, strict=strict, log_file=self.log)
        self.cb.progress = SimpleNamespace(bar=tqdm(total=20, disable=True))

    def step(self, *, loss=1.0, grad=1.0, supervised=True, lr=1e-3):
        self.control = TrainerControl(should_save=True)
        self.cb.on_step_begin(self.args, self.state, self.control)
        labels = torch.tensor([[5, 6, 7]]) if supervised else torch.full((1, 3), -100)
        self.cb.observe_batch({"labels": labels}, torch.tensor(loss))
        for p in self.model.parameters():
            p.grad = torch.full_like(p, grad)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.cb.on_pre_optimizer_step(self.args, self.state, self.control, model=self.model, optimizer=self.opt)
        self.state.global_step += 1
        self.cb.on_step_end(self.args, self.state, self.control)

    def logs(self, *losses):
        for v in losses:
            self.cb.on_log(self.args, self.state, self.control, logs={"loss": v, "learning_rate": 1e-3})

    @property
    def kinds(self) -> list[str]:
        return [a.kind for a in self.cb.alarms]


def test_normal_steps_raise_nothing(tmp_path):
    run = Run(tmp_path, warmup=2)
    for i in range(6):
        run.step(loss=2.0 - 0.1 * i, grad=0.5, lr=0.0 if i == 0 else 1e-3)  # lr 0 only inside the warm-up
        run.logs(2.0 - 0.1 * i)
    assert run.kinds == [] and run.cb.fatal is None and not run.log.exists()


@pytest.mark.parametrize("loss,grad,what", [(float("nan"), 1.0, "loss"), (1.0, float("inf"), "gradient norm")])
def test_non_finite_stops_drops_the_update_and_forbids_saving(tmp_path, loss, grad, what):
    run = Run(tmp_path)
    run.step()
    run.step(loss=loss, grad=grad)
    assert run.kinds == ["non_finite"] and run.cb.fatal.step == 2 and what in run.cb.fatal.detail
    assert all(p.grad is None for p in run.model.parameters())  # AdamW then leaves the weights alone
    assert run.control.should_training_stop and not run.control.should_save
    assert "1 alarms" in run.cb.progress.bar.desc
    record = json.loads(run.log.read_text().splitlines()[0])
    assert record["alarm"] == "non_finite" and record["fatal"] is True


def test_fp16_overflow_is_left_to_the_grad_scaler_unless_it_persists(tmp_path):
    run = Run(tmp_path)
    run.args.fp16 = True
    for _ in range(SCALER_PATIENCE - 1):
        run.step(grad=float("inf"))
    assert run.kinds == [] and run.cb.fatal is None
    run.step(grad=float("inf"))
    assert run.kinds == ["non_finite"] and f"{SCALER_PATIENCE} steps in a row" in run.cb.fatal.detail


def test_zero_gradient_warns_and_strict_makes_it_fatal(tmp_path):
    run = Run(tmp_path)
    run.step(grad=0.0)
    assert run.kinds == ["zero_grad"] and run.cb.fatal is None and not run.control.should_training_stop
    (tmp_path / "strict").mkdir()
    strict = Run(tmp_path / "strict", strict=True)
    strict.step(grad=0.0)
    assert strict.cb.fatal.kind == "zero_grad" and strict.control.should_training_stop


def test_batch_without_supervised_tokens(tmp_path):
    run = Run(tmp_path)
    run.step(supervised=False, grad=0.0)  # its zero gradient is explained by the batch, not a no-op adapter
    run.step(supervised=False, grad=0.0)
    assert run.kinds == ["no_supervised_tokens"] and run.cb.counts["no_supervised_tokens"] == 2


def test_learning_rate_zero_after_warmup_only(tmp_path):
    run = Run(tmp_path, warmup=2)
    run.step(lr=0.0)
    run.step(lr=0.0)
    assert run.kinds == []
    run.step(lr=0.0)
    assert run.kinds == ["zero_lr"] and run.cb.alarms[0].step == 3


@pytest.mark.parametrize("value,kind", [(0.0, "zero_loss"), (1.25, "constant_loss")])
def test_loss_stuck_for_patience_logging_steps(tmp_path, value, kind):
    run = Run(tmp_path, patience=3)
    run.logs(value, value)
    assert run.kinds == []
    run.logs(value)
    assert run.kinds == [kind]
    assert str(run.cb.alarms[0]).endswith(CAUSES[kind])


def write_rows(path, n: int):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"say {i}"},
                                                      {"role": "assistant", "content": f"{i}"}]}) + "\n"
                            for i in range(n)))
    return path


@pytest.mark.slow
def test_end_to_end_normal_run_is_silent_and_crafted_runs_alarm(tiny_text_dir, tmp_path):
    data = write_rows(tmp_path / "data.jsonl", 8)
    base = ["--model", str(tiny_text_dir), "--dataset", str(data), "--max_steps", "4", "--save_steps", "1",
            "--logging_steps", "1", "--torch_dtype", "float32", "--max_length", "64"]

    normal = sft(parse("sft", [*base, "--output_dir", str(tmp_path / "normal")]))
    assert normal.summary.alarms == [] and normal.summary.status == "completed"
    assert "alarm" not in (tmp_path / "normal" / "logging.jsonl").read_text()

    # A huge learning rate overflows the weights after step 1: the step-2 loss is NaN.
    out = tmp_path / "nan"
    with pytest.raises(TrainingStopped, match=r"alarm non_finite at step 2.*checkpoint-1"):
        sft(parse("sft", [*base, "--output_dir", str(out), "--learning_rate", "1e38"]))
    assert last_checkpoint(out).name == "checkpoint-1" and not (out / "checkpoint-2").exists()
    assert not (out / "checkpoint-final").exists()
    assert json.loads((out / "run_summary.json").read_text())["status"] == "stopped by alarm non_finite"

    out = tmp_path / "strict"
    with pytest.raises(TrainingStopped, match="zero_lr"):
        sft(parse("sft", [*base, "--output_dir", str(out), "--learning_rate", "0", "--strict_alarms"]))
    assert last_checkpoint(out) is None  # stopped before the first save


def test_trainable_tensors_that_never_get_a_gradient(tmp_path):
    run = Run(tmp_path)
    unused = torch.nn.Linear(2, 2)  # trainable but off the forward path, like a vision adapter on text data
    run.model = torch.nn.ModuleDict({"used": torch.nn.Linear(4, 2), "unused": unused})
    for i in range(3):
        run.cb.on_pre_optimizer_step(run.args, run.state, run.control, model=_with_grads(run.model, skip="unused"),
                                     optimizer=run.opt)
        run.state.global_step += 1
        assert run.kinds == ([] if i < 2 else ["zero_grad"])
    assert "2 of 4 trainable tensors got no gradient in 3 steps (unused.bias, unused.weight)" in str(run.cb.alarms[0])


def _with_grads(model, skip: str):
    for name, p in model.named_parameters():
        p.grad = None if name.startswith(skip) else torch.ones_like(p)
    return model


@pytest.mark.slow
def test_end_to_end_no_op_adapter(tiny_vl_dir, tmp_path):
    """LoRA on the vision tower too, trained on text-only rows: that part of the adapter never gets a gradient."""
    data = write_rows(tmp_path / "data.jsonl", 4)
    result = sft(parse("sft", ["--model", str(tiny_vl_dir), "--dataset", str(data), "--max_steps", "3",
                               "--save_strategy", "no", "--torch_dtype", "float32", "--max_length", "64",
                               "--freeze_vit", "false", "--output_dir", str(tmp_path / "o")]))
    assert [a.split(" ")[0] for a in result.summary.alarms] == ["zero_grad"]
    assert "visual" in (tmp_path / "o" / "logging.jsonl").read_text()
