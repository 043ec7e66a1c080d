"""The switches a user chooses for their hardware compute the plain path's math: the
attention implementation, rematerialisation and the dropout PRNG."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import sharding, trainer
from transformer.config import ConfigError, MeshConfig, from_config_dict
from transformer.data.tasks import load_task
from transformer.decode import greedy_decode
from transformer.layers import dropout
from transformer.loss import loss_and_metrics
from transformer.model import DecoderOnlyLM, Transformer

from .model_configs import small_model_config, tiny_config

SRC = jnp.array([[5, 6, 7, 8, 9, 1, 0, 0], [4, 9, 1, 0, 0, 0, 0, 0], [7, 6, 5, 4, 7, 6, 5, 1]])
TGT = jnp.array([[5, 6, 7, 1, 0, 0], [4, 1, 0, 0, 0, 0], [9, 8, 7, 6, 5, 1]])


def model_config(**overrides):
    """One layer per stack (compiling is what these tests spend their time on)."""
    return small_model_config(**{"num_encoder_layers": 1, "num_decoder_layers": 1, **overrides})


def init(model, *args):
    return nn.meta.unbox(jax.jit(lambda rng: model.init(rng, *args))(jax.random.key(0)))["params"]


def loss_fn(model, params, *inputs, rng=None):
    logits = model.apply(
        {"params": params},
        *inputs,
        deterministic=rng is None,
        rngs=None if rng is None else {"dropout": rng},
    )
    return loss_and_metrics(logits, inputs[-1], 0.1)[0]


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


# ------------------------------------------------------------------ attention implementation
@pytest.mark.slow
def test_dot_product_attention_gives_the_plain_logits_and_gradients_with_padding():
    plain = Transformer(model_config())
    dpa = Transformer(model_config(attention="dot_product_attention"))
    params = init(plain, SRC, TGT)  # Same parameters: only the computation differs.
    np.testing.assert_allclose(
        dpa.apply({"params": params}, SRC, TGT),
        plain.apply({"params": params}, SRC, TGT),
        rtol=1e-5,
        atol=1e-5,
    )
    grads = jax.jit(jax.grad(lambda p: loss_fn(plain, p, SRC, TGT)))(params)
    dpa_grads = jax.jit(jax.grad(lambda p: loss_fn(dpa, p, SRC, TGT)))(params)
    assert_trees_close(dpa_grads, grads)


@pytest.mark.slow
def test_dot_product_attention_keeps_packed_segments_apart():
    packed = dict(
        inputs_positions=jnp.array([[0, 1, 2, 0, 1, 0, 0, 0]]),
        targets_positions=jnp.array([[0, 1, 0, 1, 2, 0]]),
        inputs_segmentation=jnp.array([[1, 1, 1, 2, 2, 0, 0, 0]]),
        targets_segmentation=jnp.array([[1, 1, 2, 2, 2, 0]]),
    )
    src = jnp.array([[5, 6, 1, 7, 1, 0, 0, 0]])
    tgt = jnp.array([[8, 1, 9, 4, 1, 0]])
    plain = Transformer(model_config())
    dpa = Transformer(model_config(attention="dot_product_attention"))
    params = init(plain, SRC, TGT)
    np.testing.assert_allclose(
        dpa.apply({"params": params}, src, tgt, **packed),
        plain.apply({"params": params}, src, tgt, **packed),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.slow
def test_dot_product_attention_greedy_decoding_equals_the_plain_path():
    cfg = dict(vocab_size=10, tie_output_embedding=False)  # SRC, TGT < 10.
    plain = Transformer(model_config(**cfg))
    dpa = Transformer(model_config(**cfg, attention="dot_product_attention"))
    params = init(plain, SRC, TGT)
    np.testing.assert_array_equal(
        greedy_decode(dpa, params, SRC, 10), greedy_decode(plain, params, SRC, 10)
    )


def test_attention_weights_are_still_returned_with_dot_product_attention():
    model = Transformer(model_config(attention="dot_product_attention"))
    params = init(model, SRC, TGT)
    _, state = model.apply({"params": params}, SRC, TGT, mutable=["intermediates"])
    weights = state["intermediates"]["encoder"]["layer_0"]["self_attention"]["attention_weights"]
    assert weights[0].shape == (3, 2, 8, 8)
    np.testing.assert_allclose(weights[0][1, :, :3].sum(-1), 1.0, rtol=1e-5)  # Real rows.


@pytest.mark.parametrize(
    "overrides, named",
    [
        (
            {"model.attention": "dot_product_attention", "model.attention_dropout_rate": 0.1},
            "model.attention",
        ),
        ({"model.attention": "dot_product_attention", "model.d_v": 8}, "model.attention"),
        ({"model.remat": "all"}, "model.remat"),
        ({"dropout_rng": "philox"}, "dropout_rng"),
    ],
)
def test_unsupported_switch_combinations_are_refused_naming_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        from_config_dict(tiny_config(**overrides))


# ---------------------------------------------------------------------------- remat
@pytest.mark.parametrize("remat", ["block", pytest.param("dots", marks=pytest.mark.slow)])
def test_remat_gives_the_plain_loss_and_gradients_with_dropout(remat):
    cfg = dict(dropout_rate=0.1, attention_dropout_rate=0.1)
    plain = Transformer(model_config(**cfg))
    checkpointed = Transformer(model_config(**cfg, remat=remat))
    params = init(plain, SRC, TGT)
    shapes = jax.eval_shape(lambda: init(checkpointed, SRC, TGT))
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
    rng = jax.random.key(7)
    want = jax.jit(jax.value_and_grad(lambda p: loss_fn(plain, p, SRC, TGT, rng=rng)))(params)
    got = jax.jit(jax.value_and_grad(lambda p: loss_fn(checkpointed, p, SRC, TGT, rng=rng)))(params)
    assert_trees_close(got, want)


@pytest.mark.slow
def test_remat_gives_the_plain_gradients_of_a_language_model_with_dropout():
    cfg = dict(dropout_rate=0.1, attention_dropout_rate=0.1)
    plain = DecoderOnlyLM(model_config(**cfg))
    checkpointed = DecoderOnlyLM(model_config(**cfg, remat="block"))
    params = init(plain, TGT)
    rng = jax.random.key(3)
    want = jax.jit(jax.value_and_grad(lambda p: loss_fn(plain, p, TGT, rng=rng)))(params)
    got = jax.jit(jax.value_and_grad(lambda p: loss_fn(checkpointed, p, TGT, rng=rng)))(params)
    assert_trees_close(got, want)


@pytest.mark.slow
def test_remat_block_cuts_the_compiled_gradients_memory():
    """What XLA allocates for the backward pass, not only what JAX saves for it: the
    recomputed layers must not all be live at once (XLA's CPU compiler drops the barrier
    JAX orders them with; `cpu.recomputed_after_cotangent`)."""
    src = jnp.tile(SRC, (16, 4))  # [48, 32]: activations outweigh the parameters.
    tgt = jnp.tile(TGT, (16, 4))
    sizes = dict(num_encoder_layers=4, num_decoder_layers=4, d_model=64, d_ff=256)
    temp = {}
    for remat in ("none", "block"):
        model = Transformer(model_config(**sizes, remat=remat))
        params = init(model, src, tgt)
        grad = jax.jit(jax.grad(lambda p, m=model: loss_fn(m, p, src, tgt, rng=jax.random.key(0))))
        temp[remat] = grad.lower(params).compile().memory_analysis().temp_size_in_bytes
    assert temp["block"] < 0.5 * temp["none"], temp


# ---------------------------------------------------------------------- dropout PRNG
@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    config = from_config_dict(tiny_config())
    return load_task(config.data, str(tmp_path_factory.mktemp("vocab")))


@functools.cache
def built(overrides: tuple, vocab_size: int):
    """trainer.build of the tiny config with `overrides`, one device; cached so that runs of
    one config share its compiled step."""
    config = from_config_dict(tiny_config(**dict(overrides)))
    config = dataclasses.replace(config, mesh=MeshConfig(1, 1, 1)).with_vocab_size(vocab_size)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    return config, mesh, trainer.build(config, mesh)


def run_steps(task, num_steps, **overrides):
    """Per-step losses and final params of `num_steps` steps of the tiny config (attention
    dropout 0.1 unless overridden), one device."""
    overrides = {"model.attention_dropout_rate": 0.1, **overrides}
    config, mesh, setup = built(tuple(sorted(overrides.items())), task.tokenizer.vocab_size)
    batches = task.train_batches(config.batch_size, config.seed, 1)
    losses = []
    with trainer.mesh_context(mesh, config):
        state = setup.init(jax.random.key(config.seed))
        for step in range(num_steps):
            batch = sharding.global_batch(batches(step), setup.batch_sharding)
            state, metrics = setup.train_step(state, batch)
            losses.append(float(metrics["loss_sum"] / metrics["tokens"]))
    return np.array(losses), jax.device_get(state.params)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_dropout_keeps_one_minus_rate_and_preserves_the_mean(impl):
    rng = jax.random.key(5, impl=impl)
    x = jnp.ones((512, 512))
    y = jax.jit(lambda k: dropout(x, 0.1, k))(rng)
    kept = np.asarray(y != 0)
    assert kept.mean() == pytest.approx(0.9, abs=0.003)  # 262,144 draws: 5 sigma.
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.9, rtol=1e-6)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.005)
    other = jax.jit(lambda k: dropout(x, 0.1, k))(jax.random.fold_in(rng, 1))
    assert 0.15 < np.mean(kept != np.asarray(other != 0)) < 0.21  # Independent: 2 p (1 - p).


@pytest.mark.slow
def test_rbg_dropout_is_deterministic_differs_from_threefry_and_trains(tiny_task):
    losses, _ = run_steps(tiny_task, 20, dropout_rng="rbg")
    again, _ = run_steps(tiny_task, 3, dropout_rng="rbg")
    threefry, _ = run_steps(tiny_task, 3, dropout_rng="threefry")
    np.testing.assert_array_equal(again, losses[:3])  # Same seed, same masks.
    assert not np.array_equal(threefry, losses[:3])  # Other random bits.
    assert losses[-5:].mean() < 0.8 * losses[:3].mean()  # Dropout and all, it learns.


@pytest.mark.slow
def test_train_steps_with_remat_and_dot_product_attention_match_the_plain_ones(tiny_task):
    """Through trainer.build, as train.py runs them, with residual dropout on (the masks must
    be the same too): the same losses and parameters after 3 steps."""
    no_attention_dropout = {"model.attention_dropout_rate": 0.0}
    plain_losses, plain_params = run_steps(tiny_task, 3, **no_attention_dropout)
    losses, params = run_steps(
        tiny_task,
        3,
        **no_attention_dropout,
        **{"model.remat": "dots", "model.attention": "dot_product_attention"},
    )
    np.testing.assert_allclose(losses, plain_losses, rtol=1e-5)
    # Every element, as the sharded steps are held to one device's (test_train.py).
    assert_trees_close(params, plain_params, rtol=1e-4, atol=1e-6)
