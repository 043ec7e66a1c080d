"""Model-level behaviour: causality, padding, packing, LayerNorm placement, sharing, dtypes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer.layers import embed_with_positions, sinusoidal_table, tied_logits, token_embedding
from transformer.masks import AttentionMask
from transformer.model import DecoderOnlyLM, Layer, Transformer, build_model

from .model_configs import small_model_config

model_config = small_model_config


def init(model, *args):
    return nn.meta.unbox(model.init(jax.random.key(0), *args))


SRC = jnp.array([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0]])
TGT = jnp.array([[11, 12, 13, 1, 0, 0], [14, 15, 16, 17, 1, 0]])


@pytest.mark.parametrize("normalization", ["post", "pre"])
def test_decoder_cannot_see_the_future(normalization):
    model = Transformer(model_config(normalization=normalization))
    variables = init(model, SRC, TGT)
    logits = model.apply(variables, SRC, TGT)
    changed = TGT.at[:, 2].set(20)
    logits2 = model.apply(variables, SRC, changed)
    # Position i predicts target i from targets < i: positions 0..2 must not move.
    np.testing.assert_allclose(logits[:, :3], logits2[:, :3], atol=1e-6)
    assert not np.allclose(logits[0, 3], logits2[0, 3])


def test_language_model_cannot_see_the_future():
    model = DecoderOnlyLM(model_config(kind="decoder_only", num_encoder_layers=0))
    variables = init(model, TGT)
    assert "cross_attention" not in variables["params"]["decoder"]["layer_0"]
    logits = model.apply(variables, TGT)
    logits2 = model.apply(variables, TGT.at[:, 3].set(20))
    np.testing.assert_allclose(logits[:, :4], logits2[:, :4], atol=1e-6)
    assert not np.allclose(logits[1, 4], logits2[1, 4])


def test_padding_does_not_change_real_positions():
    model = Transformer(model_config())
    variables = init(model, SRC, TGT)
    logits = model.apply(variables, SRC[:1, :5], TGT[:1, :4])
    padded = model.apply(
        variables, jnp.pad(SRC[:1, :5], ((0, 0), (0, 7))), jnp.pad(TGT[:1, :4], ((0, 0), (0, 5)))
    )
    np.testing.assert_allclose(logits, padded[:, :4], atol=1e-5)


def test_packed_segments_do_not_attend_to_each_other():
    model = Transformer(model_config())
    variables = init(model, SRC, TGT)
    separate = model.apply(variables, SRC, TGT)
    # Pack both pairs into one row each side, with segment ids and restarting positions.
    src = jnp.array([[5, 6, 7, 8, 1, 9, 10, 1, 0]])
    tgt = jnp.array([[11, 12, 13, 1, 14, 15, 16, 17, 1, 0]])
    packed = model.apply(
        variables,
        src,
        tgt,
        inputs_positions=jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 0]]),
        targets_positions=jnp.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 0]]),
        inputs_segmentation=jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 0]]),
        targets_segmentation=jnp.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 0]]),
    )
    np.testing.assert_allclose(packed[0, :4], separate[0, :4], atol=1e-5)
    np.testing.assert_allclose(packed[0, 4:9], separate[1, :5], atol=1e-5)


def np_layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_gelu(x):
    """GELU, in the tanh form Flax's nn.gelu computes by default."""
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_encoder_layer(x, p, cfg):
    """Section 3.1 by hand: attention (no mask) and FFN, post-LN or pre-LN."""

    def attention(h):
        a = p["self_attention"]
        q = np.einsum("ld,dhk->lhk", h, a["query"]) / np.sqrt(cfg.head_dim_k)
        k = np.einsum("ld,dhk->lhk", h, a["key"])
        v = np.einsum("ld,dhk->lhk", h, a["value"])
        logits = np.einsum("qhk,lhk->hql", q, k)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        out = np.einsum("hql,lhd->qhd", w, v)
        return np.einsum("qhd,hdm->qm", out, a["out"])

    def ffn(h):
        f = p["ffn"]
        act = (lambda z: np.maximum(z, 0)) if cfg.activation == "relu" else np_gelu
        return act(h @ f["wi"]["kernel"] + f["wi"]["bias"]) @ f["wo"]["kernel"] + f["wo"]["bias"]

    ln1 = lambda h: np_layer_norm(h, p["self_attention_norm"], cfg.layer_norm_epsilon)  # noqa: E731
    ln2 = lambda h: np_layer_norm(h, p["ffn_norm"], cfg.layer_norm_epsilon)  # noqa: E731
    if cfg.normalization == "post":
        x = ln1(x + attention(x))
        return ln2(x + ffn(x))
    x = x + attention(ln1(x))
    return x + ffn(ln2(x))


@pytest.mark.parametrize(
    "normalization, activation", [("post", "relu"), ("pre", "relu"), ("post", "gelu")]
)
def test_encoder_layer_follows_post_ln_or_pre_ln_order_and_its_activation(
    normalization, activation
):
    cfg = model_config(normalization=normalization, activation=activation)
    layer = Layer(cfg, cross_attention=False)  # An encoder layer.
    x = jax.random.normal(jax.random.key(1), (1, 5, cfg.d_model)) * 3 + 1
    mask = AttentionMask(jnp.ones((1, 1, 5, 5), bool))
    params = init(layer, x, mask, None, None, True)["params"]
    # Non-trivial LayerNorm parameters, so their placement matters.
    params = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(2), v.shape), params)
    out = layer.apply({"params": params}, x, mask, None, None, True)
    ref = np_encoder_layer(
        np.asarray(x[0], np.float64), jax.tree.map(lambda v: np.asarray(v, np.float64), params), cfg
    )
    np.testing.assert_allclose(out[0], ref, rtol=1e-4, atol=1e-4)


def test_pre_ln_adds_a_final_layer_norm_to_each_stack():
    post = init(Transformer(model_config(normalization="post")), SRC, TGT)["params"]
    pre = init(Transformer(model_config(normalization="pre")), SRC, TGT)["params"]
    assert "final_norm" not in post["encoder"] and "final_norm" not in post["decoder"]
    assert "final_norm" in pre["encoder"] and "final_norm" in pre["decoder"]


def test_embedding_sharing_switches():
    shared = init(Transformer(model_config()), SRC, TGT)["params"]
    assert set(shared) == {"embed", "encoder", "decoder"}
    assert "logits" not in shared["decoder"]
    separate = init(
        Transformer(model_config(share_embeddings=False, tie_output_embedding=False)), SRC, TGT
    )["params"]
    assert {"source_embed", "target_embed"} <= set(separate)
    assert separate["decoder"]["logits"]["kernel"].shape == (16, 40)


class Embedded(nn.Module):
    """The input of the first layer: embedding x sqrt(d_model) + positions (sinusoidal or
    learned)."""

    config: object

    @nn.compact
    def __call__(self, tokens, positions):
        return embed_with_positions(
            self.config, token_embedding(self.config), tokens, positions, True
        )


@pytest.mark.parametrize("positional_encoding", ["sinusoidal", "learned"])
def test_embeddings_are_scaled_by_sqrt_d_model_and_added_to_the_positions(positional_encoding):
    cfg = model_config(positional_encoding=positional_encoding)
    positions = jnp.array([[0, 1, 2, 3, 4, 5], [3, 2, 1, 0, 7, 31]])  # Any positions < max_len.
    variables = init(Embedded(cfg), SRC, positions)
    table = variables["params"]["Embed_0"]["embedding"]
    if positional_encoding == "learned":
        position_table = variables["params"]["positions"]["embedding"]
        assert position_table.shape == (cfg.max_len, cfg.d_model)
    else:
        assert "positions" not in variables["params"]
        position_table = sinusoidal_table(cfg.max_len, cfg.d_model)
    embedded = Embedded(cfg).apply(variables, SRC, positions)
    expected = np.asarray(table)[SRC] * np.sqrt(cfg.d_model) + np.asarray(position_table)[positions]
    np.testing.assert_allclose(embedded, expected, rtol=1e-6, atol=1e-6)


def test_the_pre_softmax_projection_is_the_shared_embedding_transposed():
    cfg = model_config(num_encoder_layers=1, num_decoder_layers=1)
    model = Transformer(cfg)
    variables = init(model, SRC, TGT)
    table = variables["params"]["embed"]["embedding"]
    x = jnp.ones((1, 1, cfg.d_model))
    logits = model.apply(variables, x, method=lambda m, h: tied_logits(h, m.embed))
    np.testing.assert_allclose(logits[0, 0], table.sum(-1), rtol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    cfg32 = model_config()
    cfg16 = model_config(dtype="bfloat16")
    variables = init(Transformer(cfg32), SRC, TGT)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(init(Transformer(cfg16), SRC, TGT)))
    out32 = Transformer(cfg32).apply(variables, SRC, TGT)
    out16 = Transformer(cfg16).apply(variables, SRC, TGT)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, out32, atol=0.1)


def test_dropout_is_active_only_when_not_deterministic():
    model = build_model(model_config(dropout_rate=0.3, attention_dropout_rate=0.3))
    variables = init(model, SRC, TGT)
    a = model.apply(variables, SRC, TGT, deterministic=False, rngs={"dropout": jax.random.key(1)})
    b = model.apply(variables, SRC, TGT, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)
    # Deterministic: exactly the model without dropout, whatever its rates.
    no_dropout = build_model(model_config(dropout_rate=0.0, attention_dropout_rate=0.0))
    np.testing.assert_array_equal(
        model.apply(variables, SRC, TGT), no_dropout.apply(variables, SRC, TGT)
    )
    assert not np.allclose(a, no_dropout.apply(variables, SRC, TGT))
