"""The short report printed (and saved as run_summary.json) at the end of every training run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..run_files import SUMMARY_FILE
from .checkpoint import last_checkpoint, list_checkpoints


@dataclass
class RunSummary:
    status: str  # completed | stopped by SIGTERM | stopped by alarm <kind>
    steps: int
    max_steps: int
    tokens_seen: int  # non-padding input tokens over the whole run, resumed parts included
    samples_skipped: dict[str, int] = field(default_factory=dict)
    alarms: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    last_checkpoint: str | None = None
    final_dir: str | None = None

    def text(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in self.samples_skipped.items()) or "none"
        lines = [
            f"[tailorkit] run summary: {self.status}",
            f"  steps: {self.steps} of {self.max_steps}; tokens seen: {self.tokens_seen:,}",
            f"  samples skipped: {skipped}",
            f"  alarms: {'; '.join(self.alarms) or 'none'}",
            f"  checkpoints: {', '.join(Path(c).name for c in self.checkpoints) or 'none'}"
            + (f"; last -> {self.last_checkpoint}" if self.last_checkpoint else ""),
        ]
        if self.final_dir:
            lines.append(f"  final weights: {self.final_dir}")
        return "\n".join(lines)

    def write(self, output_dir: str | Path) -> Path:
        path = Path(output_dir) / SUMMARY_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def summarize(trainer, output_dir: Path, *, status: str, skipped: dict, alarms: list[str],
              final_dir: Path | None) -> RunSummary:
    """Collect the summary from the trainer state and the output folder."""
    last = last_checkpoint(output_dir)
    return RunSummary(status=status, steps=trainer.state.global_step, max_steps=trainer.state.max_steps,
                      tokens_seen=int(trainer.state.num_input_tokens_seen or 0), samples_skipped=dict(skipped),
                      alarms=list(alarms), checkpoints=[str(p) for p in list_checkpoints(output_dir)],
                      last_checkpoint=str(last) if last else None, final_dir=str(final_dir) if final_dir else None)
