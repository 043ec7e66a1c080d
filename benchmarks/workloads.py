"""The train-step benchmarks' workloads, batches and model FLOPs.

Workloads (fp32, one device, label smoothing 0.1, Adam, dropout 0.1 on residuals and
embeddings and 0.1 on attention weights, a shared 8,192-token vocabulary tied to the output
projection, 64 sentences x 64 source and 64 target tokens, post-LN):
  ref-small  d_model 256, 4 heads, d_ff 1,024, 3 encoder + 3 decoder layers
  ref-base   d_model 512, 8 heads, d_ff 2,048, 6 encoder + 6 decoder layers
The rest comes from configs/base.py. Any config file can be benchmarked instead
(`file_config`): its batch is batch_size x data.max_length tokens per side (with token
batching, batch_size // the longer side's limit rows; sources of data.max_source_length
tokens where a config sets it, as a summariser's).

Model FLOPs per step: transformer/flops.py. ref-small: 194.5 GFLOP per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from configs import base
from transformer.config import Config, from_config_dict, load_file, with_overrides
from transformer.flops import train_step_flops
from transformer.special_tokens import NUM_SPECIAL

WORKLOADS = {
    "ref-small": dict(d_model=256, num_heads=4, d_ff=1024, num_encoder_layers=3),
    "ref-base": dict(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6),
}
REF_ROWS, REF_LENGTH, REF_VOCAB = 64, 64, 8192
ONE_DEVICE = dict(data=1, fsdp=1, tensor=1)


def workload_config(
    name: str, overrides: Sequence[str] = (), rows: int = REF_ROWS, length: int = REF_LENGTH
) -> Config:
    """A reference workload as a validated Config on one device (vocab_size set), with the
    "KEY=VALUE" `overrides` applied last. ConfigError names a bad override."""
    config = base.get_config()
    sizes = WORKLOADS[name]
    config.model.update(sizes)
    config.model.num_decoder_layers = sizes["num_encoder_layers"]
    config.model.dropout_rate = 0.1
    config.model.attention_dropout_rate = 0.1  # As flax/examples/wmt and PyTorch run it.
    config.model.dtype = "float32"
    config.label_smoothing = 0.1
    config.batch_size = rows
    config.grad_accum_steps = 1
    config.data.max_length = length
    config.data.batching = "sentences"
    config.mesh = ConfigDict(ONE_DEVICE)
    return from_config_dict(with_overrides(config, overrides)).with_vocab_size(REF_VOCAB)


def file_config(spec: str, overrides: Sequence[str] = ()) -> Config:
    """The config of "configs/X.py[:ARG]" on one device, vocabulary = data.vocab_size, with
    the "KEY=VALUE" `overrides` applied. ConfigError names a missing file or a bad override."""
    config = load_file(spec)
    config.mesh = ConfigDict(ONE_DEVICE)
    config.grad_accum_steps = 1
    parsed = from_config_dict(with_overrides(config, overrides))
    return parsed.with_vocab_size(parsed.data.vocab_size)


def batch_shape(config: Config) -> tuple[int, int]:
    """(rows, target length) of the benchmark batch for `config`; sources are
    config.data.source_length long."""
    longest = max(config.data.max_length, config.data.source_length)
    rows = config.batch_size // longest if config.data.batching == "tokens" else config.batch_size
    return rows, config.data.max_length


def describe_batch(config: Config) -> str:
    """ "rows x length" tokens per side, or "rows x (source, target)" where they differ."""
    rows, length = batch_shape(config)
    source = config.data.source_length
    return f"{rows} x {length}" if source == length else f"{rows} x ({source}, {length})"


def with_rows(config: Config, rows: int) -> Config:
    """`config` with a benchmark batch of `rows` rows (batch_shape's inverse)."""
    longest = max(config.data.max_length, config.data.source_length)
    tokens = config.data.batching == "tokens"
    return dataclasses.replace(config, batch_size=rows * longest if tokens else rows)


def random_batch(config: Config, seed: int = 0) -> dict[str, np.ndarray]:
    """inputs [rows, source_length], targets [rows, length]: int32 tokens in
    [NUM_SPECIAL, vocab), no padding."""
    rows, length = batch_shape(config)
    rng = np.random.default_rng(seed)
    vocab = config.model.vocab_size
    return {
        "inputs": rng.integers(NUM_SPECIAL, vocab, (rows, config.data.source_length), np.int32),
        "targets": rng.integers(NUM_SPECIAL, vocab, (rows, length), np.int32),
    }


def describe_model(config: Config) -> str:
    m = config.model
    return (
        f"{m.kind}, {m.num_encoder_layers} + {m.num_decoder_layers} layers, d_model {m.d_model}, "
        f"{m.num_heads} heads, d_ff {m.d_ff}, vocab {m.vocab_size:,}"
    )


def describe_switches(config: Config) -> str:
    """The config keys that change how the same step is computed."""
    m = config.model
    return (
        f"attention={m.attention}, remat={m.remat}, dtype={m.dtype}; "
        f"dropout_rng={config.dropout_rng}"
    )


def model_flops(config: Config, params: Any, rows: int, length: int) -> dict[str, float]:
    """`flops.train_step_flops` of the benchmark batch: `rows` x `length` targets, sources
    of data.max_source_length where the config sets it, else `length`."""
    source = length if config.data.max_source_length is None else config.data.source_length
    return train_step_flops(config, params, rows, source, length)
