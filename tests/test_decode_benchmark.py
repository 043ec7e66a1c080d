"""benchmarks/decode.py decodes the workload it claims to: exactly `length` tokens per
sentence, the same with and without the cache, on one device or several; and Hugging Face's
side, in one process or several, and CTranslate2's, on our weights exported (skipped where
the export extra is not installed)."""

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
from transformer.data.generated import generate_splits
from transformer.data.tokenizer import SentencePieceTokenizer
from transformer.model import build_model, count_parameters
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


@pytest.fixture(scope="module")
def exported_tiny(tmp_path_factory):
    """(model, params, the HF export, the CTranslate2 export) of the random tiny model, with
    a 100-piece SentencePiece vocabulary of the generated task (skipped without the extra)."""
    pytest.importorskip("ctranslate2", reason="needs the export extra")
    from transformer import export

    sentences = [s for pair in generate_splits(0, 300, 0, 0)["train"] for s in pair]
    out = tmp_path_factory.mktemp("exported")
    SentencePieceTokenizer.train(sentences, 100, "bpe").save(str(out / "spm.model"))
    config, model, params, _ = tiny_model(vocab_size=100)
    export.write_hf(params, config, str(out / "spm.model"), str(out / "hf"))
    export.convert_ct2(str(out / "hf"), str(out / "ct2"), config.layer_norm_epsilon)
    return model, params, str(out / "hf"), str(out / "ct2")


INPUTS = np.array([[5, 6, 7, 1], [8, 9, 1, 0], [4, 1, 0, 0], [9, 9, 8, 1]], np.int32)


def test_compared_engines_decode_our_tokens_exactly_length_long(exported_tiny):
    from benchmarks.compare.ct2_translate import build_ct2_decoder
    from benchmarks.compare.hf_generate import hf_decoders

    model, params, hf_dir, ct2_dir = exported_tiny
    ours = {k: np.asarray(v(params, INPUTS)) for k, v in fixed_length(model, 7).items()}
    hf, n_params = hf_decoders(hf_dir, length=7, beam=BEAM, alpha=ALPHA)
    ct2, info = build_ct2_decoder(ct2_dir, 7, BEAM, chunk=3, inter_threads=2, intra_threads=1)
    cfg = model.config  # HF adds 4 zero bias vectors of d_model to each attention sublayer.
    biases = 4 * cfg.d_model * (cfg.num_encoder_layers + 2 * cfg.num_decoder_layers)
    assert n_params == count_parameters(params) + biases
    assert "inter_threads 2" in info["description"]
    for name in ("greedy", f"beam {BEAM}"):
        for engine, out in (("hf", hf[name](None, INPUTS)), ("ct2", ct2(name, INPUTS))):
            assert out.shape == (4, 7) and out.dtype == np.int32, (engine, name)
            np.testing.assert_array_equal(out, ours[name], f"{engine} {name}")


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_hf_worker_processes_decode_as_this_process_does(exported_tiny, processes):
    from benchmarks.compare.hf_generate import hf_decoders, hf_process_decoders

    hf_dir = exported_tiny[2]
    here, n_params = hf_decoders(hf_dir, 5, BEAM, ALPHA)
    split, info, workers = hf_process_decoders(hf_dir, 5, BEAM, ALPHA, processes=processes)
    try:
        assert info["parameters"] == n_params
        assert "MarianMTModel" in info["description"]
        assert len({w.info["pid"] for w in workers} | {os.getpid()}) == processes + 1
        for name in here:
            np.testing.assert_array_equal(split[name](None, INPUTS), here[name](None, INPUTS))
    finally:
        for worker in workers:
            worker.close()


def test_ctranslate2_runs_in_every_thread_layout_of_the_cores():
    from benchmarks.compare.ct2_translate import thread_layouts

    assert thread_layouts(2) == [(1, 2), (2, 1)]
    assert thread_layouts(4) == [(1, 4), (2, 2), (4, 1)]
