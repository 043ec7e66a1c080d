"""The policy for steps whose loss, gradient or update holds NaN or Inf.

The train step (train_step.py) detects such a step on the device, keeps the previous parameters
and optimizer state, and counts it in the state (`nonfinite_total`, `nonfinite_streak`). The
host sees those counts only in the metrics it fetches anyway, at log and checkpoint steps, so
the check costs no extra synchronisation; it runs before every save.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformer.errors import UserError


class NonFiniteError(UserError):
    """Training produced NaN or Inf values and cannot go on (or they would be saved)."""


def check_streak(
    metrics: Sequence[Mapping[str, Any]], first_step: int, policy: str, max_consecutive: int
) -> None:
    """Under `policy` "stop", raises NonFiniteError at the first step that ends a run of
    `max_consecutive` skipped steps; `metrics[i]` are the fetched metrics of step
    `first_step + i` (steps counted from 1, as logged)."""
    if policy != "stop":
        return
    for i, m in enumerate(metrics):
        if int(m["nonfinite_streak"]) >= max_consecutive:
            step = first_step + i
            raise NonFiniteError(
                f"Steps {step - max_consecutive + 1}-{step}: {max_consecutive} steps in a row "
                f"had a NaN or Inf loss, gradient or update ({int(m['nonfinite_total'])} such "
                "steps in all). Each was skipped, so the parameters stayed finite; stopping "
                f"(nonfinite_policy='stop', max_consecutive_nonfinite={max_consecutive}). "
                "Lower learning_rate_scale, clip gradients (grad_clip_norm) or check the "
                "data, then run again: training resumes from the newest checkpoint."
            )
