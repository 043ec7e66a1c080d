"""Train-step throughput over batch sizes and sequence lengths: a CSV and a PNG plot.

  python benchmarks/scaling_sweep.py [--workload ref-small] [--out /tmp/scaling]
      [--lengths 32,64,128,256,512] [--tokens 4096] [--batches 16,32,64,128] [--length 64]
      [--steps 9] [--lead_in 1] [--config.KEY=VALUE ...]

Each point is the train step that `benchmarks/train_step.py` times (benchmarks/steps.py: the
library's compiled step on one device, random tokens without padding; `--config.KEY=VALUE`
overrides the workload's config for every point), the median of `--steps` timed steps after
one warm-up step. All points are compiled first, then timed round robin, one timed step of
each per round, right after `--lead_in` untimed ones of the same point (so that a step
follows one of its own, as in training):
  - the length sweep holds the tokens per side of a batch at `--tokens` (rows = tokens /
    length), so the dense FLOPs per token stay fixed and only attention's, which grow with
    the length L (scores and weights x values: 4 x L x d_model per token per attention
    sublayer, forward), change: target tokens/s falls as L grows;
  - the batch sweep holds the length at `--length` and grows the rows.
Writes `scaling.csv` (one row per point: sweep, rows, length, tokens, seconds per step, target
tokens/s, model GFLOP per step, of which attention, achieved GFLOP/s) and `scaling.png` (tokens/s
against length with the analytic attention share of the FLOPs, and tokens/s against batch) to
`--out`, and prints each point as a line. The default grid takes a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import describe_machine, load_average, other_load, sample_cpu
from benchmarks.steps import build_step, time_alternating
from benchmarks.workloads import WORKLOADS, model_flops, random_batch, workload_config
from transformer.config import ConfigError, split_overrides

FIELDS = (
    "sweep",
    "rows",
    "length",
    "tokens",
    "step_seconds",
    "target_tokens_per_second",
    "gflop_per_step",
    "attention_gflop_per_step",
    "achieved_gflop_per_second",
)


def build_points(workload: str, overrides: list[str], grid: list[tuple[str, int, int]]) -> list:
    """(sweep, rows, length, compiled step, analytic FLOPs) for each point of `grid`."""
    built = []
    for sweep, rows, length in grid:
        config = workload_config(workload, overrides, rows=rows, length=length)
        step = build_step(config, random_batch(config))
        built.append((sweep, rows, length, step, model_flops(config, step.params, rows, length)))
    return built


def summarize(sweep: str, rows: int, length: int, seconds: float, flops: dict) -> dict:
    return {
        "sweep": sweep,
        "rows": rows,
        "length": length,
        "tokens": rows * length,
        "step_seconds": round(seconds, 6),
        "target_tokens_per_second": round(rows * length / seconds, 1),
        "gflop_per_step": round(flops["total"] / 1e9, 2),
        "attention_gflop_per_step": round(flops["attention"] / 1e9, 2),
        "achieved_gflop_per_second": round(flops["total"] / seconds / 1e9, 1),
    }


def plot(points: list[dict], title: str, path: str) -> None:
    """tokens/s against length (with attention's FLOP share) and against batch rows."""
    fig, (by_length, by_batch) = plt.subplots(1, 2, figsize=(11, 4.2))
    lengths = [p for p in points if p["sweep"] == "length"]
    if lengths:
        x = [p["length"] for p in lengths]
        by_length.plot(x, [p["target_tokens_per_second"] for p in lengths], "o-", color="C0")
        by_length.set_xscale("log", base=2)
        by_length.set_xticks(x, [str(v) for v in x])
        by_length.set_xlabel(f"sequence length (rows x length = {lengths[0]['tokens']:,} tokens)")
        by_length.set_ylabel("target tokens/s", color="C0")
        share = by_length.twinx()
        share.plot(
            x,
            [100 * p["attention_gflop_per_step"] / p["gflop_per_step"] for p in lengths],
            "s--",
            color="C1",
        )
        share.set_ylabel("attention share of model FLOPs (%)", color="C1")
        share.set_ylim(bottom=0)
        by_length.set_ylim(bottom=0)
        by_length.set_title("fixed tokens per batch: attention's L^2 term")
    batches = [p for p in points if p["sweep"] == "batch"]
    if batches:
        x = [p["rows"] for p in batches]
        by_batch.plot(x, [p["target_tokens_per_second"] for p in batches], "o-", color="C2")
        by_batch.set_xscale("log", base=2)
        by_batch.set_xticks(x, [str(v) for v in x])
        by_batch.set_xlabel(f"batch rows (length {batches[0]['length']})")
        by_batch.set_ylabel("target tokens/s")
        by_batch.set_ylim(bottom=0)
        by_batch.set_title("fixed length: batch size")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str], list]:
    """(the flags, the --config.KEY=VALUE overrides, the grid of (sweep, rows, length)); a
    bad grid or override is a usage error before anything is written or built."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="ref-small")
    parser.add_argument("--out", default="/tmp/scaling", help="Folder for the CSV and PNG.")
    parser.add_argument("--lengths", default="32,64,128,256,512")
    parser.add_argument("--tokens", type=int, default=4096, help="Tokens per side (lengths).")
    parser.add_argument("--batches", default="16,32,64,128")
    parser.add_argument("--length", type=int, default=64, help="Length of the batch sweep.")
    parser.add_argument("--steps", type=int, default=9)
    lead_help = "Untimed steps before each timed one of a point."
    parser.add_argument("--lead_in", type=int, default=1, help=lead_help)
    rest, overrides = split_overrides(argv)
    args = parser.parse_args(rest)
    grid = [("length", args.tokens // int(v), int(v)) for v in args.lengths.split(",")]
    grid += [("batch", int(v), args.length) for v in args.batches.split(",")]
    if any(rows < 1 for _, rows, _ in grid):
        parser.error("--tokens must be at least the longest of --lengths.")
    try:
        workload_config(args.workload, overrides)
    except ConfigError as e:
        parser.error(str(e))
    return args, overrides, grid


def write_csv(points: list[dict], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(points)


def main() -> None:
    args, overrides, grid = parse_args(sys.argv[1:])
    os.makedirs(args.out, exist_ok=True)
    print(describe_machine())
    shown = ", ".join(overrides) or "none"
    print(f"{args.workload}, overrides {shown}; load average {load_average()}")
    built = build_points(args.workload, overrides, grid)
    cpu_start = sample_cpu()
    # Round robin, one step of every point per round: load from other jobs hits all alike.
    runs = {i: b[3].run for i, b in enumerate(built)}
    wall, _ = time_alternating(runs, args.steps, warmup=1, lead_in=args.lead_in)
    points = []
    for i, (sweep, rows, length, _, flops) in enumerate(built):
        point = summarize(sweep, rows, length, statistics.median(wall[i]), flops)
        points.append(point)
        print(
            f"  {sweep:6s} {rows:5d} x {length:4d}: {point['step_seconds']:7.3f} s/step "
            f"{point['target_tokens_per_second']:10,.0f} tokens/s "
            f"{point['achieved_gflop_per_second']:7.1f} GFLOP/s "
            f"(attention {point['attention_gflop_per_step']:.1f} of "
            f"{point['gflop_per_step']:.1f} GFLOP)",
            flush=True,
        )
    csv_path = os.path.join(args.out, "scaling.csv")
    png_path = os.path.join(args.out, "scaling.png")
    write_csv(points, csv_path)
    plot(points, f"{args.workload} train step, {describe_machine()}", png_path)
    print(other_load(cpu_start, sample_cpu(), os.cpu_count() or 1)[0])
    print(f"Load average at end {load_average()}. Wrote {csv_path} and {png_path}.")


if __name__ == "__main__":
    main()
