"""A trained model restored from its workdir for evaluation and translation, on any mesh.

The workdir's config.json, vocabulary and checkpoints are all that is needed. Parameters are
restored onto the shardings of the current devices, whatever mesh wrote them, and can be the
average of several checkpoints (section 6.1: the last 5 for base, the last 20 for big).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp

from transformer import checkpoint, sharding, trainer, workdir
from transformer.config import Config, MeshConfig, from_config_dict
from transformer.data.text_files import CorpusError
from transformer.data.tokenizer import Tokenizer
from transformer.errors import UserError
from transformer.special_tokens import EOS_ID

# Inference shards the batch over every device; parameters are replicated.
DATA_PARALLEL = MeshConfig(data=-1, fsdp=1, tensor=1)


class CheckpointNotFoundError(UserError):
    """The workdir has no checkpoint, or not the one asked for."""


@dataclasses.dataclass(frozen=True)
class Restored:
    config: Config  # As trained, with vocab_size set and the mesh of this process.
    tokenizer: Tokenizer
    placed: trainer.ModelOnMesh
    params: Any
    steps: tuple[int, ...]  # The checkpoint(s) the parameters come from.


def select_steps(available: list[int], step: int | None, average_last: int, where: str):
    """The checkpoint steps to restore: `step` (default the newest) and the ones before it."""
    if not available:
        raise CheckpointNotFoundError(f"{where} holds no checkpoint; train first.")
    step = available[-1] if step is None else step
    if step not in available:
        raise CheckpointNotFoundError(f"{where} has no step {step}; it has {available}.")
    chosen = [s for s in available if s <= step][-average_last:]
    if len(chosen) < average_last:
        raise CheckpointNotFoundError(
            f"Averaging the last {average_last} checkpoints up to step {step} needs that many; "
            f"{where} has {chosen}. Keep more with --config.keep_checkpoints."
        )
    return tuple(chosen)


def restore(
    workdir_path: str,
    step: int | None = None,
    average_last: int = 1,
    checkpoint_dir: str | None = None,
    mesh_config: MeshConfig = DATA_PARALLEL,
) -> Restored:
    """Restores the parameters of `step` (default: the newest checkpoint that reads), or
    their average with the checkpoints before it, from `checkpoint_dir` (default
    workdir/checkpoints)."""
    config = from_config_dict(workdir.read_config(workdir_path))
    tokenizer = workdir.load_vocabulary(config.data, workdir_path)
    config = dataclasses.replace(config, mesh=mesh_config).with_vocab_size(tokenizer.vocab_size)
    mesh = sharding.make_mesh(mesh_config)
    placed = trainer.build(config, mesh)
    directory = checkpoint_dir or os.path.join(workdir_path, "checkpoints")
    if not os.path.isdir(directory):
        raise CheckpointNotFoundError(f"{directory} does not exist; train first.")
    ckpt = checkpoint.Checkpointer(directory, read_only=True)
    meta = workdir.checkpoint_meta(config)
    try:
        with trainer.mesh_context(mesh, config):
            newest = None
            if step is None and ckpt.all_steps():  # Falls back past a damaged checkpoint.
                step, newest = ckpt.restore_newest(placed.abstract_state, meta)
            steps = select_steps(ckpt.all_steps(), step, average_last, directory)
            total = None
            for s in steps:  # One state at a time: averaging 20 holds no more than one.
                if newest is not None and s == steps[-1]:
                    params = newest.params
                else:
                    params = ckpt.restore(s, placed.abstract_state, meta).params
                total = params if total is None else jax.tree.map(jnp.add, total, params)
            params = jax.tree.map(lambda x: x / len(steps), total) if len(steps) > 1 else total
    finally:
        ckpt.close()
    return Restored(config, tokenizer, placed, params, steps)


def read_lines(path: str) -> list[str]:
    """Lines of `path` ('-': stdin), for translate.py and generate.py; a CorpusError names
    the line of invalid UTF-8."""
    if path == "-":
        raw = sys.stdin.buffer.read()
    else:
        with open(path, "rb") as f:
            raw = f.read()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    text = []
    for number, line in enumerate(lines, start=1):
        try:
            text.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise CorpusError(f"{path}:{number}: invalid UTF-8 at byte {e.start}.") from None
    return text


def fit_sources(tokenizer: Tokenizer, texts: list[str], limit: int, label: str) -> list[list[int]]:
    """EOS-terminated ids of each text, a source over `limit` tokens cut to the limit with a
    warning on stderr naming it (`label` and its number from 1)."""
    ids = tokenizer.encode_batch(texts)
    for number, seq in enumerate(ids, start=1):
        if len(seq) > limit:
            print(f"warning: {label} {number} has {len(seq)} tokens; the model takes {limit}, "
                  "so it is cut.", file=sys.stderr)  # fmt: skip
            ids[number - 1] = [*seq[: limit - 1], EOS_ID]
    return ids
