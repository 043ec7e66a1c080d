"""The recurrent baseline (model.kind "rnn"): its arithmetic against NumPy, its cached
decoding against the full model, and the pipeline end to end (train, restore, evaluate)."""

import math
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from transformer.attention_readout import attention_readout
from transformer.config import ConfigError, MeshConfig, from_config_dict
from transformer.data.tasks import load_task
from transformer.decode import beam_search, greedy_decode, init_cache
from transformer.model import RecurrentEncoderDecoder, shift_right
from transformer.special_tokens import EOS_ID

from .model_configs import small_model_config, tiny_config
from .test_decode import (
    EXHAUSTIVE_BEAM,
    EXHAUSTIVE_LENGTH,
    EXHAUSTIVE_VOCAB,
    MAX_LENGTH,
    SRC_LENGTHS,
    TGT,
    brute_force,
    init,
    random_sources,
    reference_greedy,
    step_logits,
)
from .test_train import REPO, run_steps

D_MODEL = 16


def rnn_config(**overrides):
    """2 + 2 LSTM layers of d_model 16; an untied output layer, as test_decode's models."""
    return small_model_config(
        **{"kind": "rnn", "vocab_size": 8, "tie_output_embedding": False, **overrides}
    )


# ------------------------------------------------------------------- NumPy reference
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_step(p, x, c, h):
    """One LSTM step as Hochreiter & Schmidhuber with a forget gate (Gers et al. 2000):
    i, f, o = σ(x W_x + h W_h + b), g = tanh(...), c' = f c + i g, h' = o tanh(c')."""
    z = {
        g: x @ p[f"i{g}"]["kernel"] + h @ p[f"h{g}"]["kernel"] + p[f"h{g}"]["bias"] for g in "ifgo"
    }
    c = sigmoid(z["f"]) * c + sigmoid(z["i"]) * np.tanh(z["g"])
    return c, sigmoid(z["o"]) * np.tanh(c)


def lstm_over(p, xs, h0=None, reverse=False):
    """xs [length, features] -> the states [length, hidden], from (0, h0)."""
    hidden = p["hi"]["kernel"].shape[0]
    c, h = np.zeros(hidden), np.zeros(hidden) if h0 is None else h0
    out = np.zeros((len(xs), hidden))
    for t in reversed(range(len(xs))) if reverse else range(len(xs)):
        c, h = lstm_step(p, xs[t], c, h)
        out[t] = h
    return out


def attention_step(p, h, encoded):
    """Luong's global attention for one decoder state h [d]: (h̃ [d], weights [src_len])."""
    scores = (h @ p["query"]["kernel"]) @ encoded.T / math.sqrt(len(h))
    weights = np.exp(scores - scores.max())
    weights /= weights.sum()
    mixed = np.concatenate([weights @ encoded, h]) @ p["output"]["kernel"]
    return np.tanh(mixed), weights


def reference_logits(params, source, target):
    """The whole model in NumPy for one unpadded pair of id lists: logits [tgt_len, vocab]."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    table, scale = p["embed"]["embedding"], math.sqrt(D_MODEL)
    x = table[source] * scale
    for name in sorted(k for k in p["encoder"] if k.startswith("layer_")):
        layer = p["encoder"][name]
        x = np.concatenate(
            [lstm_over(layer["forward"], x), lstm_over(layer["backward"], x, reverse=True)], 1
        )
    encoded, decoder = x, p["decoder"]
    first = encoded[0, D_MODEL // 2 :]  # The backward state at the first source token.
    y = table[np.asarray(shift_right(jnp.asarray([target]), jnp.arange(len(target))[None]))[0]]
    y = y * scale
    for i in range(len([k for k in decoder if k.startswith("layer_")])):
        start = decoder[f"initial_state_{i}"]
        h0 = np.tanh(first @ start["kernel"] + start["bias"])
        y = lstm_over(decoder[f"layer_{i}"]["lstm"], y, h0)
    top = decoder[f"layer_{i}"]["cross_attention"]
    mixed = np.stack([attention_step(top, h, encoded)[0] for h in y])
    return mixed @ decoder["logits"]["kernel"], np.stack(
        [attention_step(top, h, encoded)[1] for h in y]
    )


def test_logits_and_attention_equal_a_numpy_lstm_and_luong_attention():
    model = RecurrentEncoderDecoder(rnn_config(num_decoder_layers=2))
    src = random_sources(8, [7, 4, 2])  # Rows of different lengths: the backward LSTMs
    targets = TGT  # must start at each row's last real token.
    variables = init(model, src, targets)
    logits, state = model.apply(variables, src, targets, mutable=["intermediates"])
    weights = state["intermediates"]["decoder"]["layer_1"]["cross_attention"]
    weights = np.asarray(weights["attention_weights"][0])  # [batch, 1, tgt_len, src_len]
    for row, length in enumerate([7, 4, 2]):
        source = np.asarray(src[row, :length])
        target = np.asarray(targets[row][: int((targets[row] != 0).sum())])
        want, want_weights = reference_logits(variables["params"], source, target)
        np.testing.assert_allclose(logits[row, : len(target)], want, rtol=1e-4, atol=1e-5)
        got_weights = weights[row, 0, : len(target)]
        np.testing.assert_allclose(got_weights[:, :length], want_weights, atol=1e-6)
        assert np.all(got_weights[:, length:] == 0.0)  # Padding gets no attention.


# ---------------------------------------------------------------------- decoding
def init_lively(model, *args):
    """Weights four times their initial size: at init, a recurrent model this small emits
    the same token for every source; larger weights give varied outputs, some ending."""
    variables = nn.meta.unbox(model.init(jax.random.key(1), *args))
    return jax.tree.map(lambda x: 4.0 * x, variables)


def test_cached_steps_equal_the_full_model():
    model = RecurrentEncoderDecoder(rnn_config())
    src = random_sources(8, SRC_LENGTHS[:3])
    variables = init(model, src, TGT)
    full = model.apply(variables, src, TGT)
    encoded = model.apply(variables, src, method=RecurrentEncoderDecoder.encode)
    cache = init_cache(model, variables["params"], 3, MAX_LENGTH, encoded, src)
    decoder_input = shift_right(TGT, jnp.broadcast_to(jnp.arange(TGT.shape[1]), TGT.shape))
    cached = step_logits(model, variables["params"], cache, decoder_input, (encoded, src))
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)
    # The cache is each decoder layer's LSTM state, nothing of the length of the output.
    shapes = {leaf.shape for leaf in jax.tree.leaves(cache)}
    assert shapes == {(3, D_MODEL)}


def test_cached_greedy_decoding_matches_the_full_models_argmax():
    model = RecurrentEncoderDecoder(rnn_config())
    src = random_sources(8, SRC_LENGTHS)
    variables = init_lively(model, src, src)
    got = jax.jit(lambda p, x: greedy_decode(model, p, x, MAX_LENGTH))(variables["params"], src)
    np.testing.assert_array_equal(got, reference_greedy(model, variables, src, MAX_LENGTH))
    assert len(np.unique(got)) > 3


def test_beam_of_one_is_greedy_decoding():
    model = RecurrentEncoderDecoder(rnn_config())
    src = random_sources(8, SRC_LENGTHS)
    params = init_lively(model, src, src)["params"]
    search = jax.jit(lambda p, x: beam_search(model, p, x, MAX_LENGTH, 1, 0.0))
    greedy = np.asarray(greedy_decode(model, params, src, MAX_LENGTH))
    np.testing.assert_array_equal(search(params, src)[0], greedy)
    finished = (greedy == EOS_ID).any(1)  # Rows that end and rows that fill the buffer.
    assert finished.any() and not finished.all()


@pytest.mark.slow
def test_a_beam_wider_than_all_candidates_finds_the_brute_force_optimum():
    # The beam reorders the LSTM states it caches as it reorders the Transformer's keys.
    model = RecurrentEncoderDecoder(rnn_config(vocab_size=EXHAUSTIVE_VOCAB))
    src = random_sources(EXHAUSTIVE_VOCAB, [5, 3, 6, 2], seed=1)
    variables = init(model, src, src)
    search = jax.jit(lambda p, x: beam_search(model, p, x, EXHAUSTIVE_LENGTH, EXHAUSTIVE_BEAM, 0.6))
    tokens, scores = search(variables["params"], src)
    want_tokens, want_scores = brute_force(model, variables, src, EXHAUSTIVE_LENGTH, 0.6)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


def test_attention_readout_gives_one_head_of_the_top_layer():
    model = RecurrentEncoderDecoder(rnn_config())
    src = random_sources(8, [5])
    variables = init(model, src, TGT[:1])
    readout = attention_readout(model, variables["params"], src, TGT[:1])
    assert list(readout) == ["decoder/layer_1/cross_attention"]
    arrays = readout["decoder/layer_1/cross_attention"]
    assert arrays["attention_weights"].shape == (1, TGT.shape[1], 5)
    assert arrays["queries"].shape == (TGT.shape[1], 1, D_MODEL)
    assert arrays["keys"].shape == arrays["values"].shape == (5, 1, D_MODEL)
    # Rows sum to 1 where the decoder's input is a token (BOS and the target up to EOS)
    # and to 0 where it is PAD.
    sums = np.asarray(arrays["attention_weights"].sum(-1))[0]
    np.testing.assert_allclose(sums[:7], 1.0, rtol=1e-5)
    assert np.all(sums[7:] == 0.0)


# ---------------------------------------------------------------------- pipeline
def test_packed_batches_are_refused_with_the_key_named():
    with pytest.raises(ConfigError, match=r"data.batching='packed'.*one pair per row"):
        from_config_dict(tiny_config(**{"model.kind": "rnn"}))


@pytest.mark.slow
def test_sharded_train_steps_match_one_device(tmp_path):
    overrides = {"model.kind": "rnn", "data.batching": "sentences", "model.dropout_rate": 0.0}
    config = from_config_dict(tiny_config(**overrides))
    task = load_task(config.data, str(tmp_path))
    config = config.with_vocab_size(task.tokenizer.vocab_size)
    one, one_params, _ = run_steps(config, task, MeshConfig(1, 1, 1), jax.devices()[:1], 3)
    losses, params, state = run_steps(config, task, MeshConfig(2, 2, 2), jax.devices(), 3)
    np.testing.assert_allclose(losses, one, rtol=2e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, one_params
    )
    # The LSTM kernels are split as their logical names say: (None, "mlp"), hidden over tensor.
    kernel = state.params["decoder"]["layer_0"]["lstm"]["ii"]["kernel"]
    d = config.model.d_model
    assert kernel.addressable_shards[0].data.shape == (d, d // 2)


def run(script, *args):
    return subprocess.run(
        [sys.executable, str(REPO / script), *args], capture_output=True, text=True, cwd=REPO,
        timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained_rnn(tmp_path_factory):
    """A tiny recurrent model trained by train.py, and what train.py printed."""
    workdir = tmp_path_factory.mktemp("rnn")
    train = run(
        "train.py", "--config", "configs/tiny.py", f"--workdir={workdir}",
        "--config.model.kind=rnn", "--config.data.batching=sentences",
        "--config.num_train_steps=60",
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    return workdir, train.stdout + train.stderr


def test_a_tiny_recurrent_model_trains_and_its_checkpoint_restores_for_beam_search(trained_rnn):
    workdir, out = trained_rnn
    assert "Model: rnn," in out
    losses = [float(x) for x in re.findall(r"validation loss (\d+\.\d+)", out)]
    assert len(losses) >= 2 and losses[-1] < losses[0] - 0.5, losses
    evaluate = run("evaluate.py", f"--workdir={workdir}", "--beam_size=4")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert re.search(r"BLEU \d+\.\d+", evaluate.stdout + evaluate.stderr)


@pytest.mark.slow
def test_attention_maps_draw_the_recurrent_models_attention(trained_rnn):
    workdir, _ = trained_rnn
    maps = run("attention_maps.py", f"--workdir={workdir}", "--source=the man has seen the dog.")
    assert maps.returncode == 0, maps.stderr[-3000:]
    assert (workdir / "attention" / "decoder_cross_attention_layer_0.png").is_file()


def test_every_parameter_has_logical_axis_names_for_the_mesh_rules():
    model = RecurrentEncoderDecoder(rnn_config())
    tokens = jnp.ones((1, 4), jnp.int32)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens))["params"]
    specs = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, P))
    assert len(specs) == len(jax.tree.leaves(nn.meta.unbox(boxed)))
    assert all(spec != P() for spec in specs)  # An unnamed parameter would be replicated.
