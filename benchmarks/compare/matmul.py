"""XLA's and PyTorch's float32 matmuls on the shapes of a train step, side by side.

  python benchmarks/compare/matmul.py [--workload ref-base] [--repeats 7]

For each dense layer of the workload (x [rows, d_in] times w [d_in, d_out], rows = batch x
length) it times, jitted in JAX and eagerly in PyTorch (`pip install -e '.[bench]'`), the
three products of its forward and backward pass: the forward x @ w, the input gradient dy @
w^T and the weight gradient x^T @ dy, and also the square 4096^3 matmul that
benchmarks/train_step.py takes as its peak: the fastest of --repeats calls, the two
libraries taking turns, product by product. A train step whose time is mostly these products
cannot be faster than the ratio of the two kernels' speeds allows, whatever else it fuses.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.machine import describe_machine, fastest_flops
from benchmarks.workloads import WORKLOADS, batch_shape, workload_config


def products(rows: int, d_in: int, d_out: int) -> dict[str, tuple[Callable, Callable]]:
    """name -> (JAX product, PyTorch product) of the layer [rows, d_in] x [d_in, d_out]."""
    import torch

    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (rows, d_in))
    w = jax.random.normal(keys[1], (d_in, d_out))
    dy = jax.random.normal(keys[2], (rows, d_out))
    tx, tw, tdy = (torch.from_numpy(np.asarray(a).copy()) for a in (x, w, dy))

    def jitted(contract: tuple[tuple[int, ...], tuple[int, ...]], a, b) -> Callable:
        f = jax.jit(lambda a, b: lax.dot_general(a, b, (contract, ((), ()))))
        return lambda: f(a, b).block_until_ready()

    return {
        "forward x @ w": (jitted(((1,), (0,)), x, w), lambda: tx @ tw),
        "input grad dy @ w^T": (jitted(((1,), (1,)), dy, w), lambda: tdy @ tw.t()),
        "weight grad x^T @ dy": (jitted(((0,), (0,)), x, dy), lambda: tx.t() @ tdy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="ref-base")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3.")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    print(describe_machine())
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads; float32")
    config = workload_config(args.workload)
    batch, length = batch_shape(config)
    rows, d_model, d_ff = batch * length, config.model.d_model, config.model.d_ff
    layers = [(rows, d_model, d_model), (rows, d_model, d_ff), (rows, d_ff, d_model), (4096,) * 3]
    print(f"\n{'product':46s} {'XLA GFLOP/s':>12s} {'PyTorch':>9s} {'PyTorch / XLA':>14s}")
    for rows_, d_in, d_out in layers:
        flops = 2 * rows_ * d_in * d_out
        for name, (ours, theirs) in products(rows_, d_in, d_out).items():
            xla = pt = 0.0
            for _ in range(2):  # Turns, so that noise hits both alike; the faster turn counts.
                xla = max(xla, fastest_flops(ours, flops, args.repeats) / 1e9)
                pt = max(pt, fastest_flops(theirs, flops, args.repeats) / 1e9)
            label = f"[{rows_},{d_in}]x[{d_in},{d_out}] {name}"
            print(f"{label:46s} {xla:12.1f} {pt:9.1f} {pt / xla:13.2f}x")
    print(f"\nLoad average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
