"""benchmarks/decode.py decodes the workload it claims to: exactly `length` tokens per
sentence, the same with and without the cache, on one device or several; and Hugging Face's
side, in one process or several (skipped where transformers is not installed)."""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from benchmarks.decode import (
    ALPHA,
    BEAM,
    fixed_length,
    make_batches,
    uncached_beam,
    uncached_greedy,
)
from transformer.config import from_config_dict
from transformer.model import build_model
from transformer.special_tokens import EOS_ID

from .model_configs import tiny_config


def tiny_model(vocab_size=50):
    config = dataclasses.replace(from_config_dict(tiny_config()).model, vocab_size=vocab_size)
    model = build_model(config)
    inputs = jnp.asarray(np.random.default_rng(0).integers(3, vocab_size, (16, 6)), jnp.int32)
    params = nn.meta.unbox(jax.jit(lambda r: model.init(r, inputs, inputs))(jax.random.key(0)))
    return config, model, params["params"], inputs


@pytest.mark.slow
def test_fixed_length_decoding_gives_length_tokens_and_no_eos_with_or_without_a_cache():
    _, model, params, inputs = tiny_model()
    cached = fixed_length(model, 7)
    baselines = {"greedy": uncached_greedy(model, 7), f"beam {BEAM}": uncached_beam(model, 7)}
    for name, uncached in baselines.items():
        with_cache = np.asarray(cached[name](params, inputs))
        assert with_cache.shape == (16, 7) and not np.any(with_cache == EOS_ID), name
        # The baselines re-run the whole decoder: the same tokens, up to float ties.
        same = np.all(with_cache == np.asarray(uncached(params, inputs)), axis=1)
        assert same.mean() >= 0.9, (name, same)


def test_each_device_decoding_its_own_rows_gives_one_devices_tokens():
    _, model, params, inputs = tiny_model()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, PartitionSpec("data"))
    placed = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    on_one, on_each = fixed_length(model, 7), fixed_length(model, 7, rows)
    for name in on_one:
        each = on_each[name](placed, jax.device_put(inputs, rows))
        assert len(each.sharding.device_set) == len(jax.devices()), name
        np.testing.assert_array_equal(each, on_one[name](params, inputs), name)


def test_the_last_batch_is_filled_up_to_split_evenly_over_the_devices():
    sentences = [np.arange(3, 3 + n, dtype=np.int32) for n in (4, 9, 5, 2, 7)]
    batches = make_batches(sentences, batch_size=3, cap=64, rows_multiple=3)
    assert [b.shape for b in batches] == [(3, 16), (3, 8)]  # Widths rounded up to 8.
    last = np.asarray(batches[1])
    np.testing.assert_array_equal(last[2], last[1])  # The filler repeats the last sentence.
    np.testing.assert_array_equal(last[1, :7], sentences[4])
    assert [b.shape[0] for b in make_batches(sentences, 3, 64)] == [3, 2]


@pytest.mark.slow
def test_hf_comparison_generates_exactly_length_tokens_per_sentence_with_its_kv_cache():
    pytest.importorskip("transformers")
    from benchmarks.compare.hf_generate import hf_decoders

    config, *_ = tiny_model()
    decoders, n_params = hf_decoders(config, length=7, beam=BEAM, alpha=ALPHA)
    inputs = np.array([[5, 6, 7, 1], [8, 9, 1, 0], [4, 1, 0, 0]], np.int32)
    for name in ("greedy", f"beam {BEAM}"):
        out = decoders[name](None, inputs)
        assert out.shape == (3, 7) and out.dtype == np.int32, name
        assert np.all(out != EOS_ID), name  # Held off by min_new_tokens = length.
    assert n_params > 0


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_hf_worker_processes_decode_as_this_process_does(processes):
    pytest.importorskip("transformers")
    from benchmarks.compare.hf_generate import hf_decoders, hf_process_decoders

    config, *_ = tiny_model()
    inputs = np.array([[5, 6, 7, 1], [8, 9, 1, 0], [4, 1, 0, 0], [9, 9, 8, 1]], np.int32)
    here, n_params = hf_decoders(config, 5, BEAM, ALPHA)
    split, info, workers = hf_process_decoders(config, 5, BEAM, ALPHA, processes=processes)
    try:
        assert info["parameters"] == n_params
        assert "MarianMTModel" in info["description"]
        assert len({w.info["pid"] for w in workers} | {os.getpid()}) == processes + 1
        for name in here:
            np.testing.assert_array_equal(split[name](None, inputs), here[name](None, inputs))
    finally:
        for worker in workers:
            worker.close()
