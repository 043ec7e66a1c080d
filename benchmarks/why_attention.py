"""The paper's Table 1 measured: the Transformer against the recurrent baseline at equal
parameter count, in one run.

  python benchmarks/why_attention.py [--out docs/why_attention] [--lengths 16,32,64,128,256]
      [--tokens 4096] [--steps 5] [--workdirs TRANSFORMER_WORKDIR RNN_WORKDIR]
      [--sentences 100] [--check]

1. Train-step time against sequence length. configs/multi30k.py (5,992,448 parameters) and
   configs/rnn_multi30k.py (5,842,560) with `--tokens` tokens per side per batch (rows =
   tokens / length, so each model's FLOPs per token stay fixed but for attention's n^2 term),
   random tokens without padding. Each point is the library's compiled train step
   (benchmarks/steps.py), the median of `--steps` timed steps, points taking turns. For the
   recurrent model, its LSTM layers alone (forward and backward on the same batch) are timed
   as well: the share of its step spent in sequential loops.
2. Gradient against distance, with `--workdirs`: trained models of each kind restored, and
   for `--sentences` test pairs of at least 12 target tokens the norm of d loss_t / d
   embedding_i for every output position t and input position i (benchmarks/gradient_paths.py).
Writes timing.csv and timing.png, and with --workdirs gradients.csv and gradients.png, to
`--out`. `--check` builds both configs at every length and exits without compiling (a GPU
host's command line, checked on CPU).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.gradient_paths import by_distance
from benchmarks.machine import describe_machine, load_average, other_load, sample_cpu
from benchmarks.steps import build_step, time_alternating
from benchmarks.workloads import file_config, random_batch
from transformer import inference, trainer
from transformer.config import Config
from transformer.data.tasks import load_task
from transformer.model import build_model, count_parameters
from transformer.recurrent import BidirectionalLayer, lstm

CONFIGS = {"transformer": "configs/multi30k.py", "rnn": "configs/rnn_multi30k.py"}


def length_config(name: str, length: int, tokens: int) -> Config:
    """A model's recipe with batches of `tokens` tokens per side in rows of `length`."""
    overrides = [f"data.max_length={length}", f"batch_size={tokens}"]
    return file_config(CONFIGS[name], overrides)


class LSTMLayers(nn.Module):
    """The recurrent model's LSTM layers alone: its sequential loops, without embedding,
    attention, softmax or optimizer."""

    config: Any

    @nn.compact
    def __call__(self, source: jax.Array, target: jax.Array) -> jax.Array:
        """source, target [rows, length, d_model] -> a scalar (the sum of the top states)."""
        cfg, lengths = self.config, jnp.full(source.shape[:1], source.shape[1])
        for i in range(cfg.num_encoder_layers):
            source = BidirectionalLayer(cfg, name=f"encoder_{i}")(source, lengths)
        for i in range(cfg.num_decoder_layers):
            target = lstm(cfg, cfg.d_model, f"decoder_{i}")(target)
        return source.sum() + target.sum()


def lstm_layers_run(config: Config, rows: int, length: int):
    """A compiled forward + backward pass of the LSTM layers on [rows, length] inputs."""
    layers = LSTMLayers(config.model)
    x = jax.random.normal(jax.random.key(0), (rows, length, config.model.d_model))
    params = nn.meta.unbox(layers.init(jax.random.key(1), x, x))
    grad = jax.jit(jax.grad(lambda p, a, b: layers.apply(p, a, b), argnums=(0, 1, 2)))
    compiled = grad.lower(params, x, x).compile()
    return lambda: jax.block_until_ready(compiled(params, x, x))


def time_lengths(args) -> list[dict]:
    """Every (model, length) point compiled, then timed in turns."""
    runs = {}
    for length in args.lengths:
        rows = args.tokens // length
        configs = {name: length_config(name, length, args.tokens) for name in CONFIGS}
        for name, config in configs.items():
            runs[(name, length)] = build_step(config, random_batch(config)).run
        runs[("rnn loops", length)] = lstm_layers_run(configs["rnn"], rows, length)
        print(f"  compiled length {length} ({rows} rows)", flush=True)
    wall, _ = time_alternating(runs, args.steps, warmup=1, lead_in=1)
    points = []
    for length in args.lengths:
        rows, loops = args.tokens // length, statistics.median(wall[("rnn loops", length)])
        for name in CONFIGS:
            seconds = statistics.median(wall[(name, length)])
            points.append({
                "model": name, "length": length, "rows": rows,
                "step_seconds": round(seconds, 5),
                "tokens_per_second": round(rows * length / seconds, 1),
                "lstm_seconds": round(loops, 5) if name == "rnn" else "",
                "lstm_share": round(loops / seconds, 3) if name == "rnn" else "",
            })  # fmt: skip
            print(f"  {name:11s} length {length:4d}: {seconds:.3f} s/step, "
                  f"{rows * length / seconds:9,.0f} tokens/s", flush=True)  # fmt: skip
    return points


def gradient_distances(args) -> list[dict]:
    """Mean gradient norm by distance for each trained workdir, on its test split."""
    rows = []
    for name, workdir in zip(CONFIGS, args.workdirs, strict=True):
        restored = inference.restore(workdir)
        config = restored.config
        if config.model.kind != ("rnn" if name == "rnn" else "encoder_decoder"):
            raise SystemExit(f"{workdir} holds a {config.model.kind} model, not the {name}.")
        split = load_task(config.data, workdir, splits=("test",)).splits["test"]
        pairs = [
            (split.inputs[i], split.targets[i])
            for i in range(len(split))
            if len(split.targets[i]) >= 12
        ][: args.sentences]
        width = max(max(len(s), len(t)) for s, t in pairs)
        with trainer.mesh_context(restored.placed.mesh, config):
            grouped = by_distance(restored.placed.model, restored.params, pairs, width)
        for side, norms in grouped.items():
            for distance in sorted(norms):
                values = norms[distance]
                rows.append({
                    "model": name, "side": side, "distance": distance, "count": len(values),
                    "mean_norm": float(np.mean(values)), "median_norm": float(np.median(values)),
                })  # fmt: skip
        print(f"  {name}: {len(pairs)} test pairs from {workdir}", flush=True)
    return rows


def plot_timing(points: list[dict], title: str, path: str) -> None:
    """Tokens/s against length for both models; the RNN's share of time in its loops."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, name in enumerate(CONFIGS):
        mine = [p for p in points if p["model"] == name]
        ax.plot([p["length"] for p in mine], [p["tokens_per_second"] for p in mine], "o-",
                color=f"C{i}", label=f"{name} train step")  # fmt: skip
    lengths = sorted({p["length"] for p in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(v) for v in lengths])
    ax.set_xlabel(f"sequence length (rows x length = {points[0]['rows'] * lengths[0]:,} tokens)")
    ax.set_ylabel("target tokens/s")
    ax.set_ylim(bottom=0)
    share = ax.twinx()
    rnn = [p for p in points if p["model"] == "rnn"]
    share.plot([p["length"] for p in rnn], [100 * p["lstm_share"] for p in rnn], "s--",
               color="C2", label="rnn: share of step in LSTM loops")  # fmt: skip
    share.set_ylabel("share of the RNN's step in its LSTM loops (%)", color="C2")
    share.set_ylim(0, 100)
    fig.legend(loc="lower left", bbox_to_anchor=(0.1, 0.15), fontsize=8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_gradients(rows: list[dict], path: str) -> None:
    """Mean ||d loss_t / d e_i|| against distance, relative to distance 0, per side."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    titles = {
        "target": "decoder inputs: distance t - i",
        "source": "source: distance from the diagonal |j - a_t|",
    }
    for ax, side in zip(axes, titles, strict=True):
        for i, name in enumerate(CONFIGS):
            mine = [
                r for r in rows if r["model"] == name and r["side"] == side and r["count"] >= 20
            ]
            if not mine:
                continue
            first = mine[0]["mean_norm"]
            ax.plot([r["distance"] for r in mine], [r["mean_norm"] / first for r in mine],
                    "o-", color=f"C{i}", label=name)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("distance (tokens)")
        ax.set_ylabel("mean gradient norm / its value at distance 0")
        ax.set_title(titles[side], fontsize=9)
        ax.legend()
    fig.suptitle("Gradient of loss_t reaching each input embedding, trained models", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/why_attention", help="Folder for CSVs and PNGs.")
    parser.add_argument("--lengths", default="16,32,64,128,256")
    parser.add_argument("--tokens", type=int, default=4096, help="Tokens per side per batch.")
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per point.")
    parser.add_argument("--workdirs", nargs=2, metavar=("TRANSFORMER", "RNN"))
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--check", action="store_true", help="Build the configs; no compiling.")
    args = parser.parse_args(argv)
    args.lengths = [int(v) for v in args.lengths.split(",")]
    if args.tokens < max(args.lengths):
        parser.error("--tokens must be at least the longest of --lengths.")
    return args


def check(args) -> None:
    """Both configs at every length, their parameter counts from abstract shapes."""
    tokens = jnp.ones((1, 8), jnp.int32)
    for name in CONFIGS:
        for length in args.lengths:
            config = length_config(name, length, args.tokens)
        model = build_model(config.model)
        shapes = jax.eval_shape(lambda m=model: m.init(jax.random.key(0), tokens, tokens))
        print(f"  {name}: {count_parameters(shapes['params']):,} parameters; "
              f"lengths {args.lengths} build")  # fmt: skip


def main() -> None:
    args = parse_args(sys.argv[1:])
    print(describe_machine())
    print(f"load average {load_average()}")
    if args.check:
        check(args)
        return
    os.makedirs(args.out, exist_ok=True)
    cpu_start = sample_cpu()
    points = time_lengths(args)
    write_csv(points, os.path.join(args.out, "timing.csv"))
    plot_timing(points, describe_machine(), os.path.join(args.out, "timing.png"))
    if args.workdirs:
        rows = gradient_distances(args)
        write_csv(rows, os.path.join(args.out, "gradients.csv"))
        plot_gradients(rows, os.path.join(args.out, "gradients.png"))
    print(other_load(cpu_start, sample_cpu(), os.cpu_count() or 1)[0])
    print(f"Load average at end {load_average()}. Wrote {args.out}.")


if __name__ == "__main__":
    main()
