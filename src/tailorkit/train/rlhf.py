"""`tailorkit rlhf`: DPO, ORPO, SimPO, CPO, KTO, reward models and GRPO, each a kind of the one recipe.

Same data checks, encoder, model loading, tuners, checkpoints and logs as `sft`; what the algorithm reads,
encodes and computes is its entry in train/kinds.py (losses in train/preference.py and train/grpo.py).
"""

from __future__ import annotations

from ..config.rlhf import RlhfConfig
from .recipe import TrainResult, fit, prepare


def rlhf(cfg: RlhfConfig, callbacks: list | None = None) -> TrainResult:
    """Preference or reinforcement training as chosen by ``cfg.rlhf.rlhf_type``."""
    return fit(prepare(cfg, cfg.rlhf.rlhf_type, callbacks))
