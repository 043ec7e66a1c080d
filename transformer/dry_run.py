"""What a run needs before it starts: `train.py --dry_run`.

Builds the train state abstractly on the configured mesh (no parameter is allocated), and
compiles the train step for the largest batch the config makes on the present backend. Prints
the parameter count, each device's bytes of parameters and optimizer state, and XLA's memory
analysis of the compiled step. Reads no data and writes nothing: the vocabulary is taken at
its configured size, an upper bound of what the tokenizer will make.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from transformer import sharding, trainer
from transformer.config import Config, from_config_dict
from transformer.data.pipeline import max_rows
from transformer.model import count_parameters


def largest_batch(config: Config, rows_multiple: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of the biggest batch the data pipeline gives a step: every row at the
    longest lengths (with token batching, batch_size // longest rows, or the most that
    counting real tokens allows), rows rounded down to a multiple of the data-parallel
    shards. Packed rows add their positions and segments."""
    d = config.data
    if d.batching == "tokens":
        longest = max(d.max_length, d.source_length)
        rows = max_rows(config.batch_size, longest, d.token_count, rows_multiple)
    else:
        rows = max(config.batch_size // rows_multiple * rows_multiple, rows_multiple)
    sides = {"inputs": d.source_length} if config.model.has_encoder else {}
    sides["targets"] = d.max_length
    batch = {}
    for side, length in sides.items():
        names = [side] + (
            [f"{side}_positions", f"{side}_segmentation"] if d.batching == "packed" else []
        )
        batch |= {name: jax.ShapeDtypeStruct((rows, length), jnp.int32) for name in names}
    return batch


def bytes_per_device(tree: Any) -> int:
    """Bytes of the largest shard of `tree` (ShapeDtypeStructs with shardings) on a device."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
    return total


def gib(n: int | float) -> str:
    """Bytes in GiB, or MiB below one GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def dry_run(config_dict: ConfigDict) -> list[str]:
    """The report of `train.py --dry_run`, one line per item."""
    config = from_config_dict(config_dict)
    mesh = sharding.make_mesh(config.mesh)
    config = config.with_vocab_size(config.data.vocab_size)
    placed = trainer.build(config, mesh)
    state = placed.abstract_state
    shards = sharding.batch_shards(mesh, config.logical_axis_rules)
    batch = {
        name: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=placed.batch_sharding)
        for name, s in largest_batch(config, shards).items()
    }
    device = mesh.devices.flat[0]
    lines = [
        f"Mesh {dict(mesh.shape)} of {mesh.size} {device.platform} devices ({device.device_kind}).",
        f"Model: {config.model.kind}, {count_parameters(state.params):,} parameters with "
        f"a vocabulary of {config.model.vocab_size:,} (data.vocab_size).",
        f"Per device: parameters {gib(bytes_per_device(state.params))}, optimizer state "
        f"{gib(bytes_per_device(state.opt_state))}.",
    ]
    shapes = ", ".join(f"{name} {list(s.shape)}" for name, s in batch.items())
    start = time.perf_counter()
    with trainer.mesh_context(mesh, config):
        compiled = placed.train_step.lower(state, batch).compile()
    lines.append(f"Train step compiled for {shapes} in {time.perf_counter() - start:.1f} s.")
    lines += memory_lines(compiled)
    return lines


def memory_lines(compiled: Any) -> list[str]:
    """XLA's memory analysis of a compiled step, per device; one line where it has none."""
    try:
        memory = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        memory = None
    if memory is None:
        return ["XLA gives no memory analysis on this backend."]
    held = step_bytes(memory)
    return [
        f"XLA memory per device: arguments {gib(memory.argument_size_in_bytes)}, outputs "
        f"{gib(memory.output_size_in_bytes)} ({gib(memory.alias_size_in_bytes)} of them in "
        f"the donated state's buffers), temporaries {gib(memory.temp_size_in_bytes)}; "
        f"{gib(held)} at once.",
    ]


def step_bytes(memory: Any) -> int:
    """Bytes a compiled step holds at once: arguments + outputs + temporaries - donated."""
    return (
        memory.argument_size_in_bytes + memory.output_size_in_bytes
        + memory.temp_size_in_bytes - memory.alias_size_in_bytes
    )  # fmt: skip
