"""Building blocks of the Transformer (Vaswani et al. 2017, section 3).

Every parameter is created with logical axis names (`nn.with_logical_partitioning`); the mesh
axes they map to live in the config's `logical_axis_rules`, never here.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from transformer.config import ModelConfig

Array = jax.Array

# Logical names of activation axes, mapped to mesh axes by the config's rules.
BATCH, LENGTH, EMBED = "activation_batch", "activation_length", "activation_embed"
HEADS, MLP, VOCAB = "activation_heads", "activation_mlp", "activation_vocab"


def compute_dtype(config: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def constrain(x: Array, names: tuple[str | None, ...]) -> Array:
    """Annotates activation `x` with logical axis names (a no-op outside a mesh)."""
    return nn.with_logical_constraint(x, names)


def _init(init: nn.initializers.Initializer, names: tuple[str, ...]):
    return nn.with_logical_partitioning(init, names)


# ----------------------------------------------------------------------------- masks
def padding_mask(q_tokens: Array, kv_tokens: Array, pad_id: int = 0) -> Array:
    """[batch, 1, q_len, kv_len] bool: True where neither query nor key is padding."""
    return (q_tokens != pad_id)[:, None, :, None] & (kv_tokens != pad_id)[:, None, None, :]


def causal_mask(length: int) -> Array:
    """[1, 1, length, length] bool: position i may attend to positions <= i."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def segment_mask(q_segments: Array, kv_segments: Array) -> Array:
    """[batch, 1, q_len, kv_len] bool: True where query and key are in the same packed segment."""
    return q_segments[:, None, :, None] == kv_segments[:, None, None, :]


# ------------------------------------------------------------------------- attention
def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
) -> tuple[Array, Array]:
    """softmax(Q K^T / sqrt(d_k)) V, with the softmax in float32.

    Args:
      query: [batch, q_len, heads, d_k]; key: [batch, kv_len, heads, d_k];
      value: [batch, kv_len, heads, d_v]; mask: bool, broadcastable to
      [batch, heads, q_len, kv_len], True where attention is allowed.
      dropout_rate / dropout_rng: dropout on the attention weights (off when rng is None).
    Returns:
      ([batch, q_len, heads, d_v] in value's dtype, weights [batch, heads, q_len, kv_len] fp32).
      A query row whose keys are all masked gets all-zero weights, not NaN or a uniform mix.
    """
    d_k = query.shape[-1]
    # Scaling q before the product is the paper's 1/sqrt(d_k) at lower cost (l x d, not l x l).
    query = query / jnp.sqrt(d_k).astype(query.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    # A fully masked row would otherwise come out uniform: zero it so it carries no signal.
    weights = jnp.where(mask, weights, 0.0)
    probs = weights.astype(value.dtype)
    if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(value.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, value), weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate d_k (queries, keys) and d_v (values).

    Projections have no biases, as in the paper's QW^Q, KW^K, VW^V and W^O.

    With `decode=True` the module attends incrementally, keeping keys and values in the "cache"
    collection. The first such call only creates the cache (sized by its inputs) and otherwise
    attends as usual; later calls each bring one new query position:
      - self-attention (`static_kv=False`) appends that position's key and value to the cache
        and attends over the cached positions up to and including it;
      - encoder-decoder attention (`static_kv=True`) projects `inputs_kv`, the same encoder
        output at every step, on the creating call only, and attends over those keys thereafter.
    Parameters are the same with and without decoding.
    """

    config: ModelConfig
    static_kv: bool = False  # In decode mode: inputs_kv is fixed; project it once.

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        mask: Array,
        deterministic: bool,
        decode: bool = False,
    ) -> Array:
        """inputs_q: [batch, q_len, d_model]; inputs_kv: [batch, kv_len, d_model];
        mask: [batch, 1, q_len, kv_len] bool. Returns [batch, q_len, d_model].

        Decode steps: q_len = 1; for self-attention kv_len = 1 and the mask covers the cache,
        [batch, 1, 1, max_length]."""
        cfg = self.config
        dtype = compute_dtype(cfg)
        h, d_k, d_v = cfg.num_heads, cfg.head_dim_k, cfg.head_dim_v

        def kernel(name: str, shape: tuple[int, ...], names: tuple[str, ...], fan_in_axes):
            fan_out_axes = tuple(i for i in range(len(shape)) if i not in fan_in_axes)
            init = nn.initializers.variance_scaling(  # Glorot-uniform over the head axes.
                1.0, "fan_avg", "uniform", in_axis=fan_in_axes, out_axis=fan_out_axes
            )
            return self.param(name, _init(init, names), shape, jnp.float32).astype(dtype)

        def project(x: Array, w: Array) -> Array:  # [b, l, d_model] -> [b, l, h, d_k or d_v]
            y = jnp.einsum("bld,dhk->blhk", x.astype(dtype), w)
            return constrain(y, (BATCH, LENGTH, HEADS, None))

        w_q = kernel("query", (cfg.d_model, h, d_k), ("embed", "heads", "kv"), (0,))
        w_k = kernel("key", (cfg.d_model, h, d_k), ("embed", "heads", "kv"), (0,))
        w_v = kernel("value", (cfg.d_model, h, d_v), ("embed", "heads", "kv"), (0,))
        w_o = kernel("out", (h, d_v, cfg.d_model), ("heads", "kv", "embed"), (0, 1))
        query = project(inputs_q, w_q)  # [batch, q_len, heads, d_k]
        if decode and self.static_kv:
            # Lazy initialisers: the encoder output is projected on the creating call only.
            key = self.variable("cache", "cached_key", project, inputs_kv, w_k).value
            value = self.variable("cache", "cached_value", project, inputs_kv, w_v).value
        else:
            key = project(inputs_kv, w_k)  # [batch, kv_len, heads, d_k]
            value = project(inputs_kv, w_v)  # [batch, kv_len, heads, d_v]
            if decode:
                key, value, mask = self._append_to_cache(key, value, mask)

        dropout_rng = None
        if not deterministic and cfg.attention_dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        out, weights = dot_product_attention(
            query,
            key,
            value,
            mask,
            dropout_rate=cfg.attention_dropout_rate,
            dropout_rng=dropout_rng,
        )  # [batch, q_len, heads, d_v]
        # Kept for attention maps: `apply(..., mutable=["intermediates"])` returns them.
        self.sow("intermediates", "attention_weights", weights)
        out = jnp.einsum("blhk,hkd->bld", out, w_o)  # [batch, q_len, d_model]
        return constrain(out, (BATCH, LENGTH, EMBED))

    def _append_to_cache(self, key: Array, value: Array, mask: Array) -> tuple[Array, Array, Array]:
        """Writes one step's key/value [batch, 1, heads, d] at the cache index and returns the
        whole cache [batch, max_length, heads, d] with `mask` limited to positions <= index.

        On the call that creates the cache (zeros, [batch, max_length, ...] from that call's
        inputs) everything is returned unchanged."""
        is_initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not is_initialized:
            return key, value, mask
        if key.shape[1] != 1:
            raise ValueError(f"decode steps take one position at a time, got {key.shape[1]}")
        i = cache_index.value
        cached_key.value = lax.dynamic_update_slice_in_dim(cached_key.value, key, i, axis=1)
        cached_value.value = lax.dynamic_update_slice_in_dim(cached_value.value, value, i, axis=1)
        cache_index.value = i + 1
        # Slots past the index are not written yet: the new query must not see them.
        mask = mask & (jnp.arange(cached_key.value.shape[1]) <= i)[None, None, None, :]
        key = constrain(cached_key.value, (BATCH, LENGTH, HEADS, None))
        value = constrain(cached_value.value, (BATCH, LENGTH, HEADS, None))
        return key, value, mask


# ------------------------------------------------------------------- feed-forward
class FeedForward(nn.Module):
    """FFN(x) = act(x W1 + b1) W2 + b2, applied at every position (section 3.3)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [batch, length, d_model] -> [batch, length, d_model]."""
        cfg = self.config
        dtype = compute_dtype(cfg)
        h = nn.Dense(
            cfg.d_ff,
            dtype=dtype,
            kernel_init=_init(nn.initializers.xavier_uniform(), ("embed", "mlp")),
            bias_init=_init(nn.initializers.zeros, ("mlp",)),
            name="wi",
        )(x)
        h = nn.relu(h) if cfg.activation == "relu" else nn.gelu(h)
        h = constrain(h, (BATCH, LENGTH, MLP))
        out = nn.Dense(
            cfg.d_model,
            dtype=dtype,
            kernel_init=_init(nn.initializers.xavier_uniform(), ("mlp", "embed")),
            bias_init=_init(nn.initializers.zeros, ("embed",)),
            name="wo",
        )(h)
        return constrain(out, (BATCH, LENGTH, EMBED))


def layer_norm(config: ModelConfig, name: str) -> nn.LayerNorm:
    """LayerNorm over d_model; statistics are computed in float32 whatever the dtype."""
    return nn.LayerNorm(
        epsilon=config.layer_norm_epsilon,
        dtype=compute_dtype(config),
        scale_init=_init(nn.initializers.ones, ("embed",)),
        bias_init=_init(nn.initializers.zeros, ("embed",)),
        name=name,
    )


# -------------------------------------------------------------- embeddings, positions
class Embed(nn.Module):
    """Token embedding scaled by sqrt(d_model) (section 3.4); `attend` reuses it as the
    pre-softmax projection."""

    vocab_size: int
    config: ModelConfig

    def setup(self) -> None:
        d = self.config.d_model
        self.embedding = self.param(
            "embedding",
            _init(nn.initializers.normal(stddev=d**-0.5), ("vocab", "embed")),
            (self.vocab_size, d),
            jnp.float32,
        )

    def __call__(self, tokens: Array) -> Array:
        """tokens: [batch, length] int -> [batch, length, d_model]."""
        dtype = compute_dtype(self.config)
        x = jnp.take(self.embedding, tokens, axis=0).astype(dtype)
        return x * jnp.asarray(math.sqrt(self.config.d_model), dtype)

    def attend(self, x: Array) -> Array:
        """x: [batch, length, d_model] -> logits [batch, length, vocab] in float32."""
        embedding = self.embedding.astype(x.dtype)
        return jnp.einsum("bld,vd->blv", x, embedding, preferred_element_type=jnp.float32)


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
    """[max_len, d_model]: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    positions = np.arange(max_len, dtype=np.float64)[:, None]
    two_i = np.arange(0, d_model, 2, dtype=np.float64)[None, :]
    angles = positions / np.power(10000.0, two_i / d_model)
    table = np.zeros((max_len, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : d_model // 2])
    return table.astype(np.float32)


class PositionalEncoding(nn.Module):
    """Sinusoidal (fixed) or learned position vectors for explicit positions."""

    config: ModelConfig

    @nn.compact
    def __call__(self, positions: Array) -> Array:
        """positions: [batch, length] int -> [batch, length, d_model]."""
        cfg = self.config
        if cfg.positional_encoding == "sinusoidal":
            table = jnp.asarray(sinusoidal_table(cfg.max_len, cfg.d_model))
        else:
            table = self.param(
                "embedding",
                _init(nn.initializers.normal(stddev=cfg.d_model**-0.5), ("position", "embed")),
                (cfg.max_len, cfg.d_model),
                jnp.float32,
            )
        return jnp.take(table, positions, axis=0).astype(compute_dtype(cfg))
