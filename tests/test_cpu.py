"""Each CPU form (transformer/cpu.py) computes what the plain code it replaces computes, and
`cpu.plain` turns it off."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import cpu
from transformer.decode import argmax, top_k
from transformer.layers import matmul, random_bits
from transformer.loss import loss_and_metrics
from transformer.model import Transformer

from .model_configs import small_model_config

SRC = jnp.array([[5, 6, 7, 8, 9, 1, 0, 0], [4, 9, 1, 0, 0, 0, 0, 0], [7, 6, 5, 4, 7, 6, 5, 1]])
TGT = jnp.array([[5, 6, 7, 1, 0, 0], [4, 1, 0, 0, 0, 0], [9, 8, 7, 6, 5, 1]])


def test_the_tests_run_where_the_forms_apply():
    assert jax.default_backend() == "cpu"


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "contract"),
    [((2, 3, 4), (4, 5), 1), ((2, 3, 4), (4, 2, 6), 1), ((2, 3, 2, 6), (2, 6, 4), 2)],
)
def test_flat_matmul_and_its_gradients_equal_the_plain_product(x_shape, w_shape, contract):
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), w_shape)

    def value_and_grads(x, w):
        y, vjp = jax.vjp(lambda x, w: matmul(x, w, contract), x, w)
        return (y, *vjp(jnp.cos(y)))

    fast = jax.jit(value_and_grads)(x, w)
    with cpu.plain("flat_matmul"):
        plain = jax.jit(value_and_grads)(x, w)
    assert "flat_matmul" not in cpu._turned_off  # Back on once the block ends.
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 4, 16, 16)])
def test_threefry_bits_are_jax_random_bits(shape):
    rng = jax.random.fold_in(jax.random.key(3), 11)
    fast = jax.jit(lambda k: random_bits(k, shape))(rng)
    np.testing.assert_array_equal(fast, jax.random.bits(rng, shape, jnp.uint32))
    with cpu.plain("threefry_bits"):
        np.testing.assert_array_equal(jax.jit(lambda k: random_bits(k, shape))(rng), fast)


def loss_and_grads(remat: str):
    """The compiled loss-and-gradient function of a 2 + 2-layer model with dropout, and its
    parameters and batch ([48, 32] tokens: the activations outweigh the parameters)."""
    config = small_model_config(
        num_encoder_layers=2, num_decoder_layers=2, d_model=64, d_ff=256, dropout_rate=0.1,
        remat=remat,
    )  # fmt: skip
    model = Transformer(config)
    src, tgt = jnp.tile(SRC, (16, 4)), jnp.tile(TGT, (16, 4))
    params = nn.meta.unbox(model.init(jax.random.key(0), src, tgt))["params"]

    def loss(p):
        logits = model.apply({"params": p}, src, tgt, deterministic=False,
                             rngs={"dropout": jax.random.key(1)})  # fmt: skip
        return loss_and_metrics(logits, tgt, 0.1)[0]

    return jax.jit(jax.value_and_grad(loss)), params


@pytest.mark.slow
def test_recomputing_after_the_cotangent_keeps_the_gradients_and_cuts_the_memory():
    """XLA's own account of the compiled backward pass: without the form, remat="block"
    recomputes every layer at the start of the backward pass and holds nearly as much as no
    remat at all."""

    def compiled(remat: str):
        step, params = loss_and_grads(remat)
        executable = step.lower(params).compile()  # One compile, run and measured.
        return executable(params), executable.memory_analysis().temp_size_in_bytes

    _, temp_none = compiled("none")
    fast, temp_fast = compiled("block")
    with cpu.plain("recomputed_after_cotangent"):
        plain, temp_plain = compiled("block")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), fast, plain)
    assert temp_fast < 0.5 * temp_none, (temp_fast, temp_none)
    assert temp_plain > 0.8 * temp_none, (temp_plain, temp_none)


def scores_with_ties_and_extremes(rows: int, n: int) -> np.ndarray:
    """[rows, n] float32 scores from a few distinct values (ties within and across blocks of
    64), one row all -inf, one with -inf in most places, one with the maximum at the end."""
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, (rows, n)).astype(np.float32)
    scores[1] = -np.inf
    scores[2, 3:] = -np.inf
    scores[3, -1] = 9.0
    return scores


@pytest.mark.parametrize("n", [8000, 130, 64, 7])
def test_blocked_argmax_is_the_first_index_of_the_maximum_as_jnp_argmax(n):
    scores = scores_with_ties_and_extremes(6, n)
    fast = jax.jit(argmax)(scores)
    np.testing.assert_array_equal(fast, jnp.argmax(scores, axis=-1))
    with cpu.plain("blocked_argmax"):
        np.testing.assert_array_equal(jax.jit(argmax)(scores), fast)
    assert fast.dtype == jnp.int32
    assert jax.jit(argmax)(scores[:0]).shape == (0,)  # No rows (a host's empty shard).


@pytest.mark.parametrize(("n", "k"), [(8000, 8), (8000, 1), (200, 4), (130, 3), (64, 2)])
def test_blocked_top_k_gives_lax_top_k_values_and_indices_ties_included(n, k):
    scores = scores_with_ties_and_extremes(6, n)
    fast = jax.jit(top_k, static_argnums=1)(scores, k)
    want = jax.lax.top_k(scores, k)
    for got, expected in zip(fast, want, strict=True):
        np.testing.assert_array_equal(got, expected)
    with cpu.plain("blocked_top_k"):
        plain = jax.jit(top_k, static_argnums=1)(scores, k)
    jax.tree.map(np.testing.assert_array_equal, plain, fast)
    assert jax.jit(top_k, static_argnums=1)(scores[:0], k)[1].shape == (0, k)


def test_an_unknown_form_is_refused_by_name():
    with (
        pytest.raises(ValueError, match=r"No CPU form named \['fast_softmax'\]"),
        cpu.plain("fast_softmax"),
    ):
        pass
