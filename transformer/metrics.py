"""Metric sinks: TensorBoard event files and a JSON-lines file in the workdir."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np


def summarize(sums: list[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Per-token loss, NLL, perplexity and accuracy from the summed metrics of many steps."""
    total = {k: float(np.sum([s[k] for s in sums])) for k in sums[0]}
    tokens = max(total["tokens"], 1.0)
    nll = total["nll_sum"] / tokens
    return {
        "loss": total["loss_sum"] / tokens,
        "nll": nll,
        "perplexity": float(np.exp(min(nll, 50.0))),
        "accuracy": total["correct"] / tokens,
        "tokens": total["tokens"],
    }


class MetricWriter:
    """Writes scalars to `workdir/tensorboard/` and `workdir/metrics.jsonl` (one process)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            # Imported here: tensorboardX imports PyTorch where it is installed (1.5 s), which
            # every command that only restores a checkpoint would pay.
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            # Held open for the whole run; close() releases it.
            path = os.path.join(workdir, "metrics.jsonl")
            self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._tb.add_scalar(f"{split}/{name}", value, step)
        record = {"step": step, "split": split, **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
