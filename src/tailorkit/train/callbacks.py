"""Progress bar, jsonl log and loss plot of a training run."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback

from ..run_files import LOG_FILE, PLOT_FILE

# What users of the rlhf algorithms watch, where the algorithm logs it: pairwise margins and accuracy;
# grpo/ppo mean reward, KL, entropy, clip fraction; gkd the student's KL to its teacher. Shown on the progress
# bar and in the second panel of loss.png (completion length is logged too, on another scale).
WATCHED = ("rewards/margins", "rewards/accuracies", "reward", "kl", "teacher_kl", "entropy", "clip_ratio")
BAR_KEYS = ("loss", "learning_rate", "eval_loss", "rewards/margins", "rewards/accuracies", "reward", "kl",
            "teacher_kl", "eval_reward")


class ProgressCallback(TrainerCallback):
    """One tqdm bar over optimizer steps showing loss, learning rate, the algorithm's watched metrics and ETA."""

    def __init__(self):
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, desc="training", unit="step", dynamic_ncols=True,
                            initial=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            shown = {k.split("/")[-1]: f"{logs[k]:.4g}" for k in BAR_KEYS if k in logs}
            if shown:
                self.bar.set_postfix(shown, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def append_log(output_dir: str | Path, record: dict) -> None:
    """Append one record to output_dir/logging.jsonl (the trainer's logs and evaluation metrics)."""
    with open(Path(output_dir) / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class JsonlLogCallback(TrainerCallback):
    """Appends every log record (step, epoch, loss, lr, ...) to output_dir/logging.jsonl."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        append_log(args.output_dir, {"step": state.global_step, "epoch": state.epoch, **logs})


def generation_metric_keys(rows: list[dict]) -> list[str]:
    """Keys of the generation metrics logged during training (``eval_<task>/<metric>``), in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r if k.startswith("eval_") and "/" in k))


def plot_loss(output_dir: str | Path) -> Path | None:
    """Loss (and eval loss) against step from logging.jsonl, saved as loss.png; generation metrics logged during
    training share the plot on a second axis; an rlhf run's watched metrics (``WATCHED``) get a second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(output_dir) / LOG_FILE
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    metrics = generation_metric_keys(rows)
    watched = [k for p in ("", "eval_") for k in (p + w for w in WATCHED) if any(k in r for r in rows)]
    if not train and not evals and not metrics:
        return None
    fig, axes = plt.subplots(2 if watched else 1, 1, figsize=(6, 6.5 if watched else 4), dpi=100, squeeze=False,
                             sharex=True)
    ax = axes[0][0]
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per supervised token)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if metrics:
        right = ax.twinx()
        for k, key in enumerate(metrics):  # colours after the two loss curves', so no line shares one
            right.plot(*zip(*[(r["step"], r[key]) for r in rows if key in r]), "s--", color=f"C{(k + 2) % 10}",
                       label=key[len("eval_"):])
        right.set_ylabel("eval metric")
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize="small")
    if watched:
        _plot_watched(axes[1][0], rows, watched)
    fig.tight_layout()
    out = Path(output_dir) / PLOT_FILE
    fig.savefig(out)
    plt.close(fig)
    return out


def _plot_watched(ax, rows: list[dict], keys: list[str]) -> None:
    """The algorithm's watched metrics against step (eval ones dashed with markers)."""
    for k, key in enumerate(keys):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points), "o--" if key.startswith("eval_") else "-", color=f"C{k % 10}", label=key)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("rlhf metrics")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
