"""The Transformer's building blocks (Vaswani et al. 2017, section 3), in the paper's order:
scaled dot-product attention (3.2.1) and its dropout, multi-head attention (3.2.2), the
position-wise feed-forward network (3.3), embeddings and the pre-softmax projection (3.4),
positional encoding (3.5). Which positions attend to which is transformer.masks.

Parameters carry logical axis names (`nn.with_logical_partitioning`) and activations are
constrained by them; the config's `logical_axis_rules` map those names to mesh axes.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from transformer import cpu
from transformer.config import ModelConfig
from transformer.masks import AttentionMask
from transformer.sharding import BATCH, EMBED, HEADS, LENGTH, MLP, constrain

Array = jax.Array


def compute_dtype(config: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


@cpu.faster(cpu.flat_matmul)
def matmul(x: Array, w: Array, contract: int = 1, preferred_element_type=None) -> Array:
    """x [..., *in] @ w [*in, *out] -> [..., *out], `in` being w's first `contract` axes:
    every weight matrix of the model is applied through this."""
    return jnp.tensordot(x, w, contract, preferred_element_type=preferred_element_type)


def dense_dot_general(x: Array, kernel: Array, dimension_numbers, precision=None, **kwargs):
    """`nn.Dense`'s product, x [..., in] with its kernel [in, out], as `matmul`."""
    assert dimension_numbers == (((x.ndim - 1,), (0,)), ((), ())) and precision is None
    return matmul(x, kernel, preferred_element_type=kwargs.get("preferred_element_type"))


# --------------------------------------------------------------------------- dropout
@cpu.faster(cpu.threefry_bits)
def random_bits(rng: Array, shape: tuple[int, ...]) -> Array:
    """uint32 [shape] of random bits."""
    return jax.random.bits(rng, shape, jnp.uint32)


def dropout(x: Array, rate: float, rng: Array) -> Array:
    """Zeroes each element of `x` with probability `rate` and scales the rest by 1 / (1 - rate)."""
    threshold = min(round((1.0 - rate) * 2**32), 2**32 - 1)
    keep = random_bits(rng, x.shape) < np.uint32(threshold)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
    """`dropout` with a key from the "dropout" rng collection; the identity when deterministic."""

    rate: float

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.rate, self.make_rng("dropout"))


# ------------------------------------------------------------------------- attention
def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    cache_layout: bool = False,
) -> tuple[Array, Array]:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V (section 3.2.1), softmax in float32.

    query, key: [batch, q_len | kv_len, heads, d_k]; value: [batch, kv_len, heads, d_v] (with
    `cache_layout`, the KV cache's key [batch, heads, kv_len, d_k] and value [batch, heads,
    kv_len, d_v]); mask: bool, broadcastable to [batch, heads, q_len, kv_len]; dropout on the
    weights where `dropout_rng` is given. Returns ([batch, q_len, heads, d_v], weights [batch,
    heads, q_len, kv_len] float32); a query with no key gets zero weights, not NaN."""
    scores, mix = ATTENTION_SPECS[cache_layout]
    # Scaling q before the product is the paper's 1/sqrt(d_k) at lower cost (l x d, not l x l).
    query = query / jnp.sqrt(query.shape[-1]).astype(query.dtype)
    logits = jnp.einsum(scores, query, key, preferred_element_type=jnp.float32)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)
    probs = weights.astype(value.dtype)
    if dropout_rng is not None:
        probs = dropout(probs, dropout_rate, dropout_rng)
    out = jnp.einsum(mix, probs, value)
    return (jnp.swapaxes(out, 1, 2) if cache_layout else out), weights


# The two products of attention, for keys and values [batch, length, heads, d] or in the KV
# cache's layout, [batch, heads, length, d], which the products read as it is: stored as
# [batch, length, heads, d], every decode step would copy the whole cache into it (a third of
# a CPU decode step). A step writes one contiguous [d] row per head. Over the cache the
# second product keeps the heads first; XLA's CPU backend otherwise transposes inside it.
ATTENTION_SPECS = {
    False: ("bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd"),
    True: ("bqhd,bhkd->bhqk", "bhqk,bhkd->bhqd"),
}


def attention_over_shared_rows(
    query: Array, key: Array, value: Array, mask: Array, *args: Any
) -> tuple[Array, Array]:
    """`dot_product_attention` where each row of keys and values serves `group` consecutive
    rows of queries (query rows = group x key rows): beam search's hypotheses of a sentence
    share its cross-attention keys and values, which it stores once. The group's queries
    attend as query positions of one row, so each key row is read once per step."""
    if query.shape[0] == key.shape[0]:  # No rows shared (also: no rows at all).
        return dot_product_attention(query, key, value, mask, *args)
    (q_rows, q_len, heads, _), rows, kv_len = query.shape, key.shape[0], key.shape[2]
    group = q_rows // rows
    mask = jnp.broadcast_to(mask, (q_rows, 1, q_len, kv_len)).reshape(rows, 1, -1, kv_len)
    out, weights = dot_product_attention(
        query.reshape(rows, group * q_len, heads, -1), key, value, mask, *args
    )  # out [rows, group * q_len, heads, d_v], weights [rows, heads, group * q_len, kv_len]
    weights = weights.reshape(rows, heads, group, q_len, kv_len).swapaxes(1, 2)
    return out.reshape(q_rows, q_len, heads, -1), weights.reshape(q_rows, heads, q_len, kv_len)


def fused_attention(query: Array, key: Array, value: Array, mask: AttentionMask) -> Array:
    """`dot_product_attention` (d_k = d_v, no dropout) through `jax.nn.dot_product_attention`:
    on a GPU in bfloat16 cuDNN's fused attention, given the mask's lengths where it has them;
    else XLA's. Returns [batch, q_len, heads, d_v]."""
    d, half = query.shape[-1], query.dtype in (jnp.bfloat16, jnp.float16)
    cudnn = jax.default_backend() == "gpu" and half and query.shape[1] > 1 and d % 8 == 0
    implementation = "cudnn" if cudnn and d <= 128 else None
    if mask.q_lengths is not None:
        q_len, kv_len = mask.q_lengths, mask.kv_lengths
        # An all-PAD row gets one (PAD) key so that its softmax stays finite; zeroed below.
        out = jax.nn.dot_product_attention(
            query, key, value, is_causal=mask.causal, query_seq_lengths=jnp.maximum(q_len, 1),
            key_value_seq_lengths=jnp.maximum(kv_len, 1), implementation=implementation,
        )  # fmt: skip
        # [batch, q_len]: the query is not PAD and has a key.
        attends = (jnp.arange(query.shape[1]) < q_len[:, None]) & (kv_len[:, None] > 0)
        attends = attends[:, :, None, None]
    else:
        out = jax.nn.dot_product_attention(query, key, value, mask=mask.dense,
                                           implementation=implementation)  # fmt: skip
        attends = jnp.swapaxes(jnp.any(mask.dense, axis=-1), 1, 2)[..., None]  # [b, q, 1|h, 1]
    # jax.nn gives a query with no key the mean of the values; make it zeros.
    return jnp.where(attends, out, jnp.zeros((), out.dtype))


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O with head_i = Attention(Q W_i^Q,
    K W_i^K, V W_i^V) (section 3.2.2), with separate d_k and d_v and no biases, as the paper.
    `cross`: encoder-decoder attention, keys and values from the encoder output.

    `decode=True` attends over a "cache" collection of keys and values (in ATTENTION_SPECS'
    cache layout). The first such call creates it; each later call brings one query position.
    Self-attention writes its key and value into the cache and attends over the positions so
    far; cross-attention projects the encoder output on the first call only.
    """

    config: ModelConfig
    cross: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: AttentionMask,
        deterministic: bool,
        decode: bool = False,
        context: Array | None = None,
    ) -> Array:
        """x: [batch, q_len, d_model] for the queries; context: [batch, kv_len, d_model] for
        keys and values (None: x, self-attention); mask: [batch, 1, q_len, kv_len]. Returns
        [batch, q_len, d_model]. Decode steps: q_len = 1, the mask covers the whole cache."""
        context = x if context is None else context
        cfg = self.config
        h, d_k, d_v = cfg.num_heads, cfg.head_dim_k, cfg.head_dim_v
        query = self._project("query", x, (h, d_k))  # [batch, q_len, heads, d_k]
        if decode:
            key, value, mask = self._cached_keys_values(context, mask)
        else:
            key = self._project("key", context, (h, d_k))  # [batch, kv_len, heads, d_k]
            value = self._project("value", context, (h, d_v))  # [batch, kv_len, heads, d_v]
        attend_dropout = not deterministic and cfg.attention_dropout_rate > 0.0
        fused = cfg.attention == "dot_product_attention" and not decode and not attend_dropout
        if fused and not self.is_mutable_collection("intermediates"):
            out = fused_attention(query, key, value, mask)
        else:
            rng = self.make_rng("dropout") if attend_dropout else None
            attend = attention_over_shared_rows if decode else dot_product_attention
            out, weights = attend(
                query, key, value, mask.dense, cfg.attention_dropout_rate, rng, decode
            )
            # For attention maps and the explorer: `apply(..., mutable=["intermediates"])`
            # returns the weights, and outside decoding each head's queries, keys and values.
            self.sow("intermediates", "attention_weights", weights)
            if not decode:
                for name, vectors in (("queries", query), ("keys", key), ("values", value)):
                    self.sow("intermediates", name, vectors)
        w_o = self._kernel("out", (h, d_v, cfg.d_model), ("heads", "kv", "embed"), contract=2)
        return constrain(matmul(out, w_o, contract=2), (BATCH, LENGTH, EMBED))

    def _kernel(self, name: str, shape: tuple[int, ...], names: tuple, contract: int) -> Array:
        """A weight, Glorot-uniform as the matrix [first `contract` axes, the rest]."""
        init = nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=tuple(range(contract)),
            out_axis=tuple(range(contract, len(shape))),
        )  # fmt: skip
        kernel = self.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)
        return kernel.astype(compute_dtype(self.config))

    def _project(self, name: str, x: Array, features: tuple[int, int]) -> Array:
        """x [batch, len, d_model] @ W [d_model, heads, d] -> [batch, len, heads, d]."""
        w = self._kernel(name, (x.shape[-1], *features), ("embed", "heads", "kv"), contract=1)
        return constrain(matmul(x.astype(w.dtype), w), (BATCH, LENGTH, HEADS, None))

    def _cached_keys_values(
        self, context: Array, mask: AttentionMask
    ) -> tuple[Array, Array, AttentionMask]:
        """A decode step's keys [batch, heads, kv_len, d_k], values [batch, heads, kv_len,
        d_v] (ATTENTION_SPECS' cache layout) and mask."""
        cfg = self.config
        h, d_k, d_v = cfg.num_heads, cfg.head_dim_k, cfg.head_dim_v
        created = self.has_variable("cache", "cached_key")
        if self.cross and created:
            keys = self.get_variable("cache", "cached_key")
            return keys, self.get_variable("cache", "cached_value"), mask
        key, value = (
            constrain(jnp.swapaxes(self._project(name, context, (h, d)), 1, 2),
                      (BATCH, HEADS, LENGTH, None))
            for name, d in (("key", d_k), ("value", d_v))
        )  # fmt: skip
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        if self.cross:
            cached_key.value, cached_value.value = key, value
            return key, value, mask
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not created:  # Only sizes the cache: this call's output is not used.
            return key, value, mask
        if key.shape[2] != 1:
            raise ValueError(f"Decode steps take one position at a time, got {key.shape[2]}.")
        i = index.value
        cached_key.value = lax.dynamic_update_slice_in_dim(cached_key.value, key, i, axis=2)
        cached_value.value = lax.dynamic_update_slice_in_dim(cached_value.value, value, i, 2)
        index.value = i + 1
        # Slots past the index hold no key yet: the new query must not see them.
        visible = jnp.arange(cached_key.value.shape[2]) <= i
        return cached_key.value, cached_value.value, AttentionMask(mask.dense & visible)


# ------------------------------------------------------------------------ feed-forward
class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 at every position (section 3.3); GELU optional."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """x: [batch, length, d_model] -> [batch, length, d_model]."""
        cfg = self.config
        h = dense(cfg, cfg.d_ff, ("embed", "mlp"), name="wi")(x)
        h = nn.relu(h) if cfg.activation == "relu" else nn.gelu(h)
        h = constrain(h, (BATCH, LENGTH, MLP))
        return constrain(dense(cfg, cfg.d_model, ("mlp", "embed"), name="wo")(h),
                         (BATCH, LENGTH, EMBED))  # fmt: skip


def dense(config: ModelConfig, features: int, names: tuple[str, str], **kwargs) -> nn.Dense:
    """`nn.Dense` in the compute dtype, Glorot-uniform kernel, zero bias, through `matmul`."""
    return nn.Dense(
        features,
        dtype=compute_dtype(config),
        dot_general=dense_dot_general,
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
        **kwargs,
    )


def layer_norm(config: ModelConfig, name: str) -> nn.LayerNorm:
    """LayerNorm over d_model; its statistics are float32 whatever the compute dtype."""
    return nn.LayerNorm(
        epsilon=config.layer_norm_epsilon,
        dtype=compute_dtype(config),
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


# ---------------------------------------------------------- embeddings and softmax
def token_embedding(config: ModelConfig) -> nn.Embed:
    """A [vocab, d_model] token embedding (section 3.4), scaled in `embed_with_positions`."""
    init = nn.initializers.normal(stddev=config.d_model**-0.5)
    return nn.Embed(
        config.vocab_size,
        config.d_model,
        dtype=compute_dtype(config),
        embedding_init=nn.with_logical_partitioning(init, ("vocab", "embed")),
    )


def tied_logits(x: Array, table: nn.Embed) -> Array:
    """The pre-softmax projection shared with the embedding: x [batch, length, d_model] @
    embedding^T -> logits [batch, length, vocab] float32."""
    weight = table.embedding.astype(x.dtype).T
    return matmul(x, weight, preferred_element_type=jnp.float32)


# ------------------------------------------------------------------- positional encoding
def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
    """[max_len, d_model]: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    positions = np.arange(max_len, dtype=np.float64)[:, None]
    two_i = np.arange(0, d_model, 2, dtype=np.float64)[None, :]
    angles = positions / np.power(10000.0, two_i / d_model)
    table = np.zeros((max_len, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : d_model // 2])
    return table.astype(np.float32)


def embed_with_positions(
    config: ModelConfig, table: nn.Embed, tokens: Array, positions: Array, deterministic: bool
) -> Array:
    """tokens, positions [batch, length] -> Dropout(embedding * sqrt(d_model) + PE)
    [batch, length, d_model] (sections 3.4, 3.5, 5.4). Called inside a module."""
    x = table(tokens) * jnp.asarray(math.sqrt(config.d_model), compute_dtype(config))
    x = x + PositionalEncoding(config, name="positions")(positions)
    return constrain(Dropout(config.dropout_rate)(x, deterministic), (BATCH, LENGTH, EMBED))


class PositionalEncoding(nn.Module):
    """Sinusoidal (section 3.5) or learned (Table 3 row E) vectors of explicit positions."""

    config: ModelConfig

    @nn.compact
    def __call__(self, positions: Array) -> Array:
        """positions: [batch, length] int -> [batch, length, d_model]."""
        cfg = self.config
        if cfg.positional_encoding == "sinusoidal":
            table = jnp.asarray(sinusoidal_table(cfg.max_len, cfg.d_model))
        else:
            init = nn.with_logical_partitioning(
                nn.initializers.normal(stddev=cfg.d_model**-0.5), ("position", "embed")
            )
            table = self.param("embedding", init, (cfg.max_len, cfg.d_model), jnp.float32)
        return jnp.take(table, positions, axis=0).astype(compute_dtype(cfg))
