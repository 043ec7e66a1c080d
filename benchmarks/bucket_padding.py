"""Padding and compiled shapes of token batching over one epoch of a config's training split:
each side bucketed by its own length (data.max_source_length set) against both sides padded
to the longer side's bucket (translation's rule).

  python benchmarks/bucket_padding.py [--config configs/samsum.py] [--workdir /tmp/samsum]

The workdir's vocabulary is used (one is trained into a temporary directory without it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformer.config import from_config_dict, load_file
from transformer.data.pipeline import EncodedSplit, train_batches
from transformer.data.tasks import load_task


def epoch_padding(
    split: EncodedSplit, batch_size: int, max_length: int, max_source_length: int | None
) -> dict[str, float]:
    """Over one epoch of token batches: compiled shapes, steps, padded tokens per real token
    (both sides), and the share of padding on each side."""
    batches = train_batches(split, batch_size, 0, "tokens", max_length,
                            max_source_length=max_source_length)  # fmt: skip
    real, padded, shapes = np.zeros(2), np.zeros(2), set()
    for step in range(batches.steps_per_epoch):
        plan = batches.plan(step)
        rows = np.concatenate(plan.rows)
        shapes.add((len(rows), plan.source_length, plan.target_length))
        real += split.inputs.lengths[rows].sum(), split.targets.lengths[rows].sum()
        padded += len(rows) * plan.source_length, len(rows) * plan.target_length
    return {
        "shapes": len(shapes),
        "steps": batches.steps_per_epoch,
        "padded_per_real": padded.sum() / real.sum(),
        "source_padding": 1 - real[0] / padded[0],
        "target_padding": 1 - real[1] / padded[1],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/samsum.py")
    parser.add_argument("--workdir", default=None, help="Its vocabulary is used if it has one.")
    args = parser.parse_args(argv)
    config = from_config_dict(load_file(args.config))
    data = config.data
    with tempfile.TemporaryDirectory() as scratch:
        split = load_task(data, args.workdir or scratch, splits=("train",)).splits["train"]
    longest = max(data.max_length, data.source_length)
    rules = {
        "each side by its own length": (data.max_length, data.max_source_length),
        "both sides to the longer side's bucket": (longest, None),
    }
    print(f"{args.config}: {len(split)} training pairs, {config.batch_size} tokens per step")
    for name, (max_length, max_source_length) in rules.items():
        r = epoch_padding(split, config.batch_size, max_length, max_source_length)
        print(f"{name:40s} {r['shapes']:3d} shapes, {r['steps']} steps per epoch, "
              f"{r['padded_per_real']:.2f} padded tokens per real token (source "
              f"{r['source_padding']:.0%}, target {r['target_padding']:.0%} padding)")  # fmt: skip


if __name__ == "__main__":
    main()
