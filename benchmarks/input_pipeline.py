"""Input-pipeline throughput on Multi30k against what the CPU train step consumes.

  python benchmarks/input_pipeline.py [--data_dir ../shared/data/multi30k] [--steps 200]

Prints, for each batching mode at the paper's ~25,000 tokens per side per step (as configured
in configs/base.py for real data), the tokens/s (source + target, padding excluded) at which
the host builds batches and places them on the device, and the tokens/s of the
configs/multi30k.py train step, measured in the same run. The pipeline should outrun the step
by 10x or more so that the device never waits.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from configs import multi30k
from transformer import sharding, trainer
from transformer.config import MeshConfig, from_config_dict
from transformer.data.pipeline import TrainBatches
from transformer.data.prefetch import prefetch
from transformer.data.tasks import load_task

PAPER_TOKENS_PER_STEP = 25_000  # Section 5.1: ~25K source and ~25K target tokens per batch.


def pipeline_tokens_per_sec(batches: TrainBatches, steps: int, batch_sharding) -> float:
    start, tokens = time.perf_counter(), 0
    for ready in prefetch(batches, range(steps), batch_sharding):
        jax.block_until_ready(ready.batch)
        tokens += ready.real_tokens
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data/multi30k")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    config = from_config_dict(multi30k.get_config())
    data = dataclasses.replace(
        config.data, text_files=dataclasses.replace(config.data.text_files, directory=args.data_dir)
    )
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        task = load_task(data, workdir)
        print(f"Read, trained the vocabulary and encoded Multi30k in "
              f"{time.perf_counter() - start:.1f} s.")  # fmt: skip
    config = dataclasses.replace(config, data=data, mesh=MeshConfig(1, 1, 1)).with_vocab_size(
        task.tokenizer.vocab_size
    )
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    setup = trainer.build(config, mesh)
    split = task.splits["train"]

    print(f"\nPipeline at ~{PAPER_TOKENS_PER_STEP:,} tokens per side per step:")
    modes = {
        "tokens": PAPER_TOKENS_PER_STEP,
        "packed": PAPER_TOKENS_PER_STEP // data.max_length,
        "sentences": PAPER_TOKENS_PER_STEP // data.max_length,
    }
    rates = {}
    for batching, size in modes.items():
        batches = TrainBatches(split, size, 0, batching, data.max_length)
        rates[batching] = pipeline_tokens_per_sec(batches, args.steps, setup.batch_sharding)
        print(f"  {batching:9s} batch_size {size:6,}: {rates[batching]:12,.0f} tokens/s")

    batches = task.train_batches(config.batch_size, config.seed)
    with trainer.mesh_context(mesh, config):
        state = setup.init(jax.random.key(0))
        ready = [r for r in prefetch(batches, range(12), setup.batch_sharding)]
        for r in ready[:2]:  # compile every shape the timed steps use
            state, m = setup.train_step(state, r.batch)
        jax.block_until_ready(m)
        start, tokens = time.perf_counter(), 0
        for r in ready[2:]:
            state, m = setup.train_step(state, r.batch)
            tokens += r.real_tokens
        jax.block_until_ready(m)
    step_rate = tokens / (time.perf_counter() - start)
    print(f"\nTrain step (configs/multi30k.py, {jax.devices()[0].platform}): "
          f"{step_rate:12,.0f} tokens/s")  # fmt: skip
    for batching, rate in rates.items():
        print(f"  {batching:9s} pipeline / train step: {rate / step_rate:8.1f}x")


if __name__ == "__main__":
    main()
