"""Input-pipeline throughput on Multi30k against what the CPU train step consumes.

  python benchmarks/input_pipeline.py [--data_dir ../shared/data/multi30k] [--steps 200]

Prints, for each batching mode at the paper's ~25,000 tokens per side per step (section 5.1),
the tokens/s (source + target, padding excluded) at which the host builds `--steps` batches
(`transformer.data.pipeline.train_batches`) and places them on the device (`prefetch`, as
training does); then the tokens/s of the configs/multi30k.py train step over 10 of its own
batches, after one untimed step per distinct batch shape (compiling), measured in the same
run; then each pipeline's rate over the step's. The pipeline should outrun the step by 10x or
more so that the device never waits.
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
from transformer.config import Config, MeshConfig, from_config_dict
from transformer.data.pipeline import StepBatches, train_batches
from transformer.data.prefetch import prefetch
from transformer.data.tasks import Task, load_task

PAPER_TOKENS_PER_STEP = 25_000  # Section 5.1: ~25K source and ~25K target tokens per batch.


def load(data_dir: str) -> tuple[Config, Task]:
    """configs/multi30k.py on one device, reading `data_dir`, and its encoded task."""
    config = from_config_dict(multi30k.get_config())
    files = dataclasses.replace(config.data.text_files, directory=data_dir)
    data = dataclasses.replace(config.data, text_files=files)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        task = load_task(data, workdir)
        seconds = time.perf_counter() - start
    print(f"Read, trained the vocabulary and encoded Multi30k in {seconds:.1f} s.")
    config = dataclasses.replace(config, data=data, mesh=MeshConfig(1, 1, 1))
    return config.with_vocab_size(task.tokenizer.vocab_size), task


def pipeline_tokens_per_sec(batches: StepBatches, steps: int, batch_sharding) -> float:
    """Real tokens/s (both sides) of `steps` batches built and placed on the device."""
    start, tokens = time.perf_counter(), 0
    for ready in prefetch(batches, range(steps), batch_sharding):
        jax.block_until_ready(ready.batch)
        tokens += ready.real_tokens
    return tokens / (time.perf_counter() - start)


def train_step_tokens_per_sec(config: Config, task: Task, placed: trainer.ModelOnMesh) -> float:
    """Real tokens/s (both sides) of the train step over 10 batches of its own, after one
    untimed step per distinct batch shape among them."""
    batches = task.train_batches(config.batch_size, config.seed)
    with trainer.mesh_context(placed.mesh, config):
        state = placed.init(jax.random.key(0))
        ready = list(prefetch(batches, range(10), placed.batch_sharding))
        shapes = {r.batch["inputs"].shape: r for r in ready}
        for r in shapes.values():  # Compiles every shape the timed steps use.
            state, metrics = placed.train_step(state, r.batch)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for r in ready:
            state, metrics = placed.train_step(state, r.batch)
        jax.block_until_ready(metrics)
    return sum(r.real_tokens for r in ready) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/data/multi30k")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    config, task = load(args.data_dir)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    placed = trainer.build(config, mesh)
    max_length = config.data.max_length
    print(f"\nPipeline at ~{PAPER_TOKENS_PER_STEP:,} tokens per side per step:")
    sizes = {
        "tokens": PAPER_TOKENS_PER_STEP,
        "packed": PAPER_TOKENS_PER_STEP // max_length,
        "sentences": PAPER_TOKENS_PER_STEP // max_length,
    }
    rates = {}
    for batching, size in sizes.items():
        batches = train_batches(task.splits["train"], size, 0, batching, max_length)
        rates[batching] = pipeline_tokens_per_sec(batches, args.steps, placed.batch_sharding)
        print(f"  {batching:9s} batch_size {size:6,}: {rates[batching]:12,.0f} tokens/s")
    step_rate = train_step_tokens_per_sec(config, task, placed)
    platform = jax.devices()[0].platform
    print(f"\nTrain step (configs/multi30k.py, {platform}): {step_rate:12,.0f} tokens/s")
    for batching, rate in rates.items():
        print(f"  {batching:9s} pipeline / train step: {rate / step_rate:8.1f}x")


if __name__ == "__main__":
    main()
