"""Attention, masks, feed-forward and positional encodings against NumPy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer.layers import (
    MultiHeadAttention,
    dense_dot_general,
    dot_product_attention,
    fused_attention,
    matmul,
    sinusoidal_table,
)
from transformer.masks import (
    AttentionMask,
    attention_mask,
    causal_mask,
    padding_mask,
    row_lengths,
    segment_mask,
)

from .model_configs import small_model_config


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_attention(q, k, v, mask):
    """Per-head reference: softmax(q k^T / sqrt(d_k)) v, masked keys excluded."""
    b, lq, h, dk = q.shape
    out = np.zeros((b, lq, h, v.shape[-1]))
    for bi in range(b):
        for hi in range(h):
            logits = q[bi, :, hi] @ k[bi, :, hi].T / np.sqrt(dk)
            m = np.broadcast_to(mask[bi, 0], logits.shape)
            logits = np.where(m, logits, -np.inf)
            for qi in range(lq):
                if m[qi].any():
                    out[bi, qi, hi] = np_softmax(logits[qi]) @ v[bi, :, hi]
    return out


def test_attention_matches_numpy_reference_with_padding_and_causal_masks():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
    k = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
    v = rng.normal(size=(2, 5, 3, 6)).astype(np.float32)  # d_v != d_k
    tokens = np.array([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    mask = np.asarray(padding_mask(tokens, tokens) & causal_mask(5))
    out, weights = dot_product_attention(q, k, v, mask)
    np.testing.assert_allclose(out, np_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)
    # Weights of live rows sum to one and put nothing on masked keys.
    live = mask.any(-1).squeeze(1)
    np.testing.assert_allclose(np.asarray(weights).sum(-1)[:, 0][live], 1.0, rtol=1e-5)
    assert np.all(np.asarray(weights)[np.broadcast_to(~mask, weights.shape)] == 0)


def test_fully_masked_rows_give_zeros_not_nan():
    q = k = v = jnp.ones((1, 3, 2, 4))
    mask = jnp.zeros((1, 1, 3, 3), bool)
    out, weights = dot_product_attention(q, k, v, mask)
    assert np.all(np.isfinite(out)) and np.all(np.asarray(out) == 0)
    assert np.all(np.asarray(weights) == 0)


@pytest.mark.parametrize("causal", [False, True])
def test_a_masks_lengths_say_what_its_dense_mask_says(causal):
    """attention_mask on unpacked rows (padding at the end, an all-PAD row too): the
    lengths and causality rebuild the dense mask, and the fused attention given either form
    computes the plain attention."""
    tokens = np.array(
        [[5, 6, 7, 0, 0, 0], [5, 6, 7, 8, 9, 4], [0, 0, 0, 0, 0, 0], [3, 0, 0, 0, 0, 0]]
    )
    mask = attention_mask(jnp.asarray(tokens), jnp.asarray(tokens), causal=causal)
    np.testing.assert_array_equal(mask.q_lengths, [3, 6, 0, 1])
    np.testing.assert_array_equal(mask.kv_lengths, row_lengths(jnp.asarray(tokens)))
    assert mask.causal is causal
    i = np.arange(6)
    alive = i[None, :] < np.asarray(mask.q_lengths)[:, None]  # [batch, length]
    rebuilt = alive[:, None, :, None] & alive[:, None, None, :]
    if causal:
        rebuilt &= i[:, None] >= i[None, :]
    np.testing.assert_array_equal(mask.dense, rebuilt)

    q, k, v = jax.random.normal(jax.random.key(0), (3, 4, 6, 2, 8))
    plain = dot_product_attention(q, k, v, mask.dense)[0]
    for form in (mask, AttentionMask(mask.dense)):
        np.testing.assert_allclose(fused_attention(q, k, v, form), plain, rtol=1e-5, atol=1e-6)


def test_an_attention_mask_takes_both_lengths_or_neither():
    dense = jnp.ones((2, 1, 3, 3), bool)
    with pytest.raises(ValueError, match="both q_lengths and kv_lengths, or neither"):
        AttentionMask(dense, q_lengths=jnp.array([3, 2], jnp.int32))
    assert AttentionMask(dense).q_lengths is None


def test_masks_shapes_and_values():
    tokens = jnp.array([[4, 5, 0]])
    assert padding_mask(tokens, tokens).shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(causal_mask(3)[0, 0], np.tril(np.ones((3, 3), bool)))
    seg = jnp.array([[1, 1, 2]])
    np.testing.assert_array_equal(segment_mask(seg, seg)[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_multi_head_attention_module_matches_projections_by_hand():
    cfg = small_model_config(num_heads=2, d_k=3, d_v=5)
    module = MultiHeadAttention(cfg)
    x = jax.random.normal(jax.random.key(0), (2, 4, cfg.d_model))
    y = jax.random.normal(jax.random.key(1), (2, 6, cfg.d_model))
    mask = AttentionMask(jnp.ones((2, 1, 4, 6), bool).at[0, :, :, 4:].set(False))
    params = nn.meta.unbox(module.init(jax.random.key(2), x, mask, True, context=y)["params"])
    assert params["query"].shape == (cfg.d_model, 2, 3)
    assert params["value"].shape == (cfg.d_model, 2, 5)
    assert set(params) == {"query", "key", "value", "out"}  # Q W^Q etc.: no biases.
    out = module.apply({"params": params}, x, mask, True, context=y)
    q = np.einsum("bld,dhk->blhk", x, params["query"])
    k = np.einsum("bld,dhk->blhk", y, params["key"])
    v = np.einsum("bld,dhk->blhk", y, params["value"])
    ref = np.einsum("blhk,hkd->bld", np_attention(q, k, v, np.asarray(mask.dense)), params["out"])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "contract", "spec"),
    [
        ((2, 3, 4), (4, 5), 1, "bld,df->blf"),
        ((2, 3, 4), (4, 2, 6), 1, "bld,dhk->blhk"),
        ((2, 3, 2, 6), (2, 6, 4), 2, "blhk,hkd->bld"),
        ((5, 4), (4, 7), 1, "nd,df->nf"),
    ],
)
def test_matmul_and_its_gradients_equal_the_einsum(x_shape, w_shape, contract, spec):
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), w_shape)
    dy = jax.random.normal(jax.random.key(2), jnp.einsum(spec, x, w).shape)

    def grads(f):
        y, vjp = jax.vjp(f, x, w)
        return (y, *vjp(dy))

    ours = grads(lambda x, w: matmul(x, w, contract))
    ref = grads(lambda x, w: jnp.einsum(spec, x, w))
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dense_dot_general_gives_nn_denses_result_and_keeps_the_requested_output_dtype():
    x = jax.random.normal(jax.random.key(0), (2, 3, 4))
    dense = nn.Dense(5, dot_general=dense_dot_general)
    params = dense.init(jax.random.key(1), x)
    np.testing.assert_allclose(
        dense.apply(params, x), nn.Dense(5).apply(params, x), rtol=1e-6, atol=1e-6
    )
    out = matmul(
        x.astype(jnp.bfloat16), jnp.ones((4, 5), jnp.bfloat16), preferred_element_type=jnp.float32
    )
    assert out.dtype == jnp.float32 and out.shape == (2, 3, 5)


@pytest.mark.parametrize("d_model", [8, 9])
def test_sinusoidal_encoding_follows_the_papers_formula(d_model):
    table = sinusoidal_table(50, d_model)
    for pos in (0, 1, 7, 49):
        for i in range(d_model):
            angle = pos / 10000 ** (2 * (i // 2) / d_model)
            expected = np.sin(angle) if i % 2 == 0 else np.cos(angle)
            assert table[pos, i] == pytest.approx(expected, abs=1e-6)
