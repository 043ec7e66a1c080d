"""Times the label-smoothed cross-entropy formulations side by side.

  python benchmarks/loss.py [--repeats 7]

For each workload it alternates the formulations (so machine noise hits all alike) and prints
the median time of: the `one_hot` and `integer` losses and their gradient alone, over logits of
[batch, length, vocab] for a small and the paper's 37K vocabulary; and a whole quickstart train
step with each of `one_hot`, `integer` and `chunked` (which fuses the output projection into
the loss, so it has no loss-only form). configs/base.py says which is the default and why.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from configs import quickstart
from transformer import sharding, trainer
from transformer.config import MeshConfig, from_config_dict
from transformer.data.tasks import load_task
from transformer.loss import loss_and_metrics


def median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loss_only(vocab: int, formulation: str):
    logits = jax.random.normal(jax.random.key(0), (64, 64, vocab), jnp.float32)
    targets = jax.random.randint(jax.random.key(1), (64, 64), 0, vocab)
    grad = jax.jit(jax.grad(lambda x: loss_and_metrics(x, targets, 0.1, formulation)[0]))
    return lambda: grad(logits)


def train_step(formulation: str, workdir: str):
    config = from_config_dict(quickstart.get_config())
    task = load_task(config.data, workdir)
    config = dataclasses.replace(
        config, cross_entropy=formulation, mesh=MeshConfig(1, 1, 1)
    ).with_vocab_size(task.tokenizer.vocab_size)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    setup = trainer.build(config, mesh)
    batch = task.train_batches(config.batch_size, 0)(0)
    with trainer.mesh_context(mesh, config):
        state = setup.init(jax.random.key(0))
        batch = sharding.global_batch(batch, setup.batch_sharding)
        step = setup.train_step.lower(state, batch).compile()
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], batch)
        return metrics

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"{jax.devices()[0].device_kind}, JAX {jax.__version__}; median of {args.repeats}")
    with tempfile.TemporaryDirectory() as workdir:
        pair, three = ("one_hot", "integer"), ("one_hot", "integer", "chunked")
        workloads = {
            "loss+grad [64,64,1024]": (lambda f: loss_only(1024, f), pair),
            "loss+grad [64,64,37000]": (lambda f: loss_only(37_000, f), pair),
            "quickstart train step": (lambda f: train_step(f, workdir), three),
        }
        for name, (make, formulations) in workloads.items():
            fns = {f: make(f) for f in formulations}
            times = {f: [] for f in fns}
            for _ in range(3):  # alternate the sides
                for f, fn in fns.items():
                    times[f].append(median_seconds(fn, args.repeats))
            medians = {f: statistics.median(t) for f, t in times.items()}
            figures = "   ".join(f"{f} {t * 1e3:8.2f} ms" for f, t in medians.items())
            ratios = "   ".join(
                f"{f}/integer {t / medians['integer']:5.2f}x"
                for f, t in medians.items()
                if f != "integer"
            )
            print(f"{name:26s} {figures}   {ratios}")


if __name__ == "__main__":
    main()
