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
from flax import struct
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


def matmul(x: Array, w: Array, contract: int = 1, preferred_element_type=None) -> Array:
    """x [..., *in] times w [*in, *out] -> [..., *out], `in` being w's first `contract` axes,
    as one 2-D matmul [rows, prod(in)] x [prod(in), prod(out)].

    Why not an einsum over [batch, length, ...]: XLA on CPU turns the weight gradient of
    that 3-D product into a transpose of the output gradient and a matmul in a slow layout;
    over the flattened rows its weight gradient is one plain [in, rows] x [rows, out] matmul
    (the gradients of [64 x 64, 256] x [256, 1024]: 2x faster). The reshapes are free
    (row-major bitcasts)."""
    in_shape, out_shape = w.shape[:contract], w.shape[contract:]
    lead = x.shape[: x.ndim - contract]
    y = lax.dot_general(
        x.reshape(-1, math.prod(in_shape)),
        w.reshape(math.prod(in_shape), -1),
        (((1,), (0,)), ((), ())),
        preferred_element_type=preferred_element_type,
    )
    return y.reshape(*lead, *out_shape)


def dense_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None, **kwargs):
    """`nn.Dense`'s dot_general (x [..., in] with its kernel [in, out]) through `matmul`."""
    (contracting, batch_dims) = dimension_numbers
    if contracting != ((lhs.ndim - 1,), (0,)) or batch_dims != ((), ()) or precision:
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kwargs)
    return matmul(lhs, rhs, preferred_element_type=kwargs.get("preferred_element_type"))


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


@struct.dataclass
class AttentionMask:
    """An attention mask that also says how it was made, where that lets cuDNN's fused
    attention apply it itself rather than read it as an [L, L] bias (and write that bias's
    gradient) in every attention sublayer.

    dense: [batch, 1, q_len, kv_len] bool, the mask itself, which every other path uses.
    q_lengths, kv_lengths: [batch] int32, or None: `dense` is exactly "query and key are not
    padding" (and, with `causal`, "key <= query") with each row's padding at its end, after
    that many tokens. The models give lengths for unpacked rows only: a packed row's mask also
    keeps segments apart, which lengths cannot say.
    """

    dense: Array
    q_lengths: Array | None = None
    kv_lengths: Array | None = None
    causal: bool = struct.field(pytree_node=False, default=False)

    def __post_init__(self) -> None:
        if (self.q_lengths is None) != (self.kv_lengths is None):
            raise ValueError("AttentionMask takes both q_lengths and kv_lengths, or neither.")


def dense_mask(mask: Array | AttentionMask) -> Array:
    """The [batch, 1, q_len, kv_len] bool array of either form of mask."""
    return mask.dense if isinstance(mask, AttentionMask) else mask


def argmax(logits: Array) -> Array:
    """logits [..., vocab] -> [...] int32: the index of the largest logit, the lowest one
    among ties, as jnp.argmax gives it; vocab - 1 for a row that holds a NaN (jnp.argmax
    would give the NaN's index).

    Written as a max and a min rather than jnp.argmax, whose (value, index) reduction XLA
    does not vectorise on CPU: over [64, 8000] logits this is about 2x faster, greedy
    decoding runs it once per step and the train step's accuracy once."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    index = lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(logits == top, index, logits.shape[-1] - 1), axis=-1)


# --------------------------------------------------------------------------- dropout
def _threefry2x32(k0: Array, k1: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """The Threefry-2x32 block cipher (20 rounds), as jax.random's threefry2x32 computes it.

    Written out so that XLA fuses it into whatever consumes the bits: JAX lowers its own
    threefry on CPU as a loop over rounds, which stores every round's [n] words.
    """
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in rotations[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def random_bits(rng: Array, shape: tuple[int, ...]) -> Array:
    """uint32 [shape]: the same bits as `jax.random.bits(rng, shape)`.

    For a threefry key (with JAX's default jax_threefry_partitionable), computed in line: the
    cipher of each element's flat index, the two output words XORed, as JAX does. Other keys
    (rbg) go to jax.random.bits.
    """
    if str(jax.random.key_impl(rng)) != "threefry2x32":
        return jax.random.bits(rng, shape, jnp.uint32)
    if math.prod(shape) >= 2**32:
        raise ValueError(f"random_bits covers fewer than 2^32 elements, not {shape}.")
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(len(shape))):  # Per-axis iotas: partitionable over a mesh.
        index = index + lax.broadcasted_iota(jnp.uint32, shape, dim) * np.uint32(stride)
        stride *= shape[dim]
    k0, k1 = jax.random.key_data(rng)
    high, low = _threefry2x32(k0, k1, jnp.zeros(shape, jnp.uint32), index)
    return high ^ low


def dropout_keep(rng: Array, rate: float, shape: tuple[int, ...]) -> Array:
    """bool [shape]: True with probability 1 - rate (to within 2^-32), from `random_bits`."""
    threshold = min(round((1.0 - rate) * 2**32), 2**32 - 1)
    return random_bits(rng, shape) < np.uint32(threshold)


def dropout(x: Array, rate: float, rng: Array) -> Array:
    """Inverted dropout: zeroes each element of `x` with probability `rate`, scales the rest
    by 1 / (1 - rate)."""
    keep = dropout_keep(rng, rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
    """`dropout` with a key from the "dropout" rng collection; the identity when
    deterministic or at rate 0."""

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
        probs = dropout(probs, dropout_rate, dropout_rng)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, value), weights


def fused_dot_product_attention(
    query: Array, key: Array, value: Array, mask: Array | AttentionMask
) -> Array:
    """`dot_product_attention` through `jax.nn.dot_product_attention`, without dropout.

    query: [batch, q_len, heads, d]; key, value: [batch, kv_len, heads, d]; mask: bool,
    broadcastable to [batch, heads, q_len, kv_len], or an `AttentionMask`, whose lengths and
    causality (where it has them) are passed instead of the dense mask. Returns
    [batch, q_len, heads, d]. On GPU, in bfloat16/float16 with q_len > 1 and d a multiple of 8
    up to 128, it asks for cuDNN's fused (flash) attention; elsewhere JAX's XLA implementation.
    A query row whose keys are all masked gives zeros, as in `dot_product_attention`.
    """
    cudnn = (
        jax.default_backend() == "gpu"
        and query.dtype in (jnp.bfloat16, jnp.float16)
        and query.shape[1] > 1
        and query.shape[-1] % 8 == 0
        and query.shape[-1] <= 128
    )
    implementation = "cudnn" if cudnn else None
    if isinstance(mask, AttentionMask) and mask.q_lengths is not None:
        q_lengths, kv_lengths = mask.q_lengths, mask.kv_lengths
        # An all-PAD row gets one (PAD) key, so that its softmax stays finite; zeroed below.
        out = jax.nn.dot_product_attention(
            query,
            key,
            value,
            is_causal=mask.causal,
            query_seq_lengths=jnp.maximum(q_lengths, 1),
            key_value_seq_lengths=jnp.maximum(kv_lengths, 1),
            implementation=implementation,
        )
        # [b, q] -> [b, q, 1, 1]: the query is not PAD and has a key (the causal mask's first).
        attends = (jnp.arange(query.shape[1]) < q_lengths[:, None]) & (kv_lengths[:, None] > 0)
        attends = attends[:, :, None, None]
    else:
        mask = dense_mask(mask)
        out = jax.nn.dot_product_attention(
            query, key, value, mask=mask, implementation=implementation
        )
        # [b, 1|h, q] -> [b, q, 1|h, 1].
        attends = jnp.swapaxes(jnp.any(mask, axis=-1), 1, 2)[..., None]
    # jax.nn gives a row with no key the mean of the values; make it zeros.
    return jnp.where(attends, out, jnp.zeros((), out.dtype))


def cached_attention(query: Array, keys: Array, values: Array, mask: Array) -> tuple[Array, Array]:
    """One decode step's `dot_product_attention` over a cache laid out for its two matmuls.

    query: [batch, 1, heads, d_k]; keys: [batch, heads, d_k, kv_len]; values: [batch, heads,
    kv_len, d_v]; mask: bool, broadcastable to [batch, heads, 1, kv_len]. Returns
    ([batch, 1, heads, d_v], weights [batch, heads, 1, kv_len] fp32), as dot_product_attention
    would for the same keys and values in its layout (decoding has no dropout).

    Stored as [batch, kv_len, heads, d], every step would transpose the whole cache (and the
    cross-attention's fixed keys and values) for the matmuls: on CPU those copies cost more
    than the attention itself.
    """
    query = query / jnp.sqrt(query.shape[-1]).astype(query.dtype)
    logits = jnp.einsum("bqhd,bhdk->bhqk", query, keys, preferred_element_type=jnp.float32)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)
    out = jnp.einsum("bhqk,bhkd->bqhd", weights.astype(values.dtype), values)
    return out, weights


def _keys_layout(key: Array) -> Array:
    """[batch, len, heads, d_k] -> the cache's [batch, heads, d_k, len]."""
    return constrain(jnp.transpose(key, (0, 2, 3, 1)), (BATCH, HEADS, None, LENGTH))


def _values_layout(value: Array) -> Array:
    """[batch, len, heads, d_v] -> the cache's [batch, heads, len, d_v]."""
    return constrain(jnp.transpose(value, (0, 2, 1, 3)), (BATCH, HEADS, LENGTH, None))


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate d_k (queries, keys) and d_v (values).

    Projections have no biases, as in the paper's QW^Q, KW^K, VW^V and W^O.

    With `decode=True` the module attends incrementally, keeping keys and values in the "cache"
    collection (keys [batch, heads, d_k, len], values [batch, heads, len, d_v]: the layouts
    `cached_attention` reads without copies). The first such call only creates the cache
    (sized by its inputs) and otherwise attends as usual; later calls each bring one new query
    position:
      - self-attention (`static_kv=False`) appends that position's key and value to the cache
        and attends over the cached positions up to and including it;
      - encoder-decoder attention (`static_kv=True`) projects `inputs_kv`, the same encoder
        output at every step, on the creating call only, and attends over those keys thereafter.
    Parameters are the same with and without decoding.

    `config.fused_qkv`: with `static_kv=False` one kernel "query_key_value"
    [d_model, 3, heads, d] projects queries, keys and values (in one matmul where inputs_kv is
    inputs_q, as in self-attention); with `static_kv=True` "query" and one "key_value"
    [d_model, 2, heads, d] (d = d_k = d_v); each slice is initialised as its separate kernel.
    `config.attention = "dot_product_attention"`: `fused_dot_product_attention`, except where
    attention weights are asked for (a mutable "intermediates" collection) or attention dropout
    applies, which take the plain path.
    """

    config: ModelConfig
    static_kv: bool = False  # Encoder-decoder attention; in decode mode inputs_kv is fixed.

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        mask: Array | AttentionMask,
        deterministic: bool,
        decode: bool = False,
    ) -> Array:
        """inputs_q: [batch, q_len, d_model]; inputs_kv: [batch, kv_len, d_model];
        mask: [batch, 1, q_len, kv_len] bool, or an `AttentionMask` (its lengths serve the
        fused attention, its dense mask every other path). Returns [batch, q_len, d_model].

        Decode steps: q_len = 1; for self-attention kv_len = 1 and the mask covers the cache,
        [batch, 1, 1, max_length]."""
        cfg = self.config
        dtype = compute_dtype(cfg)
        h, d_k, d_v = cfg.num_heads, cfg.head_dim_k, cfg.head_dim_v

        def kernel(name: str, shape: tuple[int, ...], names: tuple, fan_in_axes, stacked=()):
            # Glorot-uniform over the head axes; `stacked` axes hold separate matrices.
            fan_out_axes = tuple(
                i for i in range(len(shape)) if i not in fan_in_axes and i not in stacked
            )
            init = nn.initializers.variance_scaling(
                1.0,
                "fan_avg",
                "uniform",
                in_axis=fan_in_axes,
                out_axis=fan_out_axes,
                batch_axis=stacked,
            )
            return self.param(name, _init(init, names), shape, jnp.float32).astype(dtype)

        def project(x: Array, w: Array) -> Array:  # [b, l, d_model] -> [b, l, h, d_k or d_v]
            y = matmul(x.astype(dtype), w)
            return constrain(y, (BATCH, LENGTH, HEADS, None))

        def project_stacked(x: Array, w: Array) -> list[Array]:  # -> n x [b, l, h, d]
            y = matmul(x.astype(dtype), w)  # [b, l, n, h, d]
            return [constrain(y[:, :, i], (BATCH, LENGTH, HEADS, None)) for i in range(w.shape[1])]

        d = cfg.d_model
        if cfg.fused_qkv:  # The config guarantees d_k = d_v.
            names = ("embed", None, "heads", "kv")
            if self.static_kv:
                w_q = kernel("query", (d, h, d_k), ("embed", "heads", "kv"), (0,))
                w_kv = kernel("key_value", (d, 2, h, d_k), names, (0,), stacked=(1,))
                query = project(inputs_q, w_q)
                project_kv = lambda x: tuple(project_stacked(x, w_kv))  # noqa: E731
            else:
                w_qkv = kernel("query_key_value", (d, 3, h, d_k), names, (0,), stacked=(1,))
                if inputs_kv is inputs_q:  # Self-attention: one matmul.
                    query, key, value = project_stacked(inputs_q, w_qkv)
                else:
                    query = project(inputs_q, w_qkv[:, 0])
                    key, value = project_stacked(inputs_kv, w_qkv[:, 1:])
        else:
            w_q = kernel("query", (d, h, d_k), ("embed", "heads", "kv"), (0,))
            w_k = kernel("key", (d, h, d_k), ("embed", "heads", "kv"), (0,))
            w_v = kernel("value", (d, h, d_v), ("embed", "heads", "kv"), (0,))
            query = project(inputs_q, w_q)  # [batch, q_len, heads, d_k]
            project_kv = lambda x: (project(x, w_k), project(x, w_v))  # noqa: E731
        w_o = kernel("out", (h, d_v, d), ("heads", "kv", "embed"), (0, 1))
        if decode and self.static_kv:
            # The encoder output is projected on the call that creates the cache only.
            if not self.has_variable("cache", "cached_key"):
                key, value = project_kv(inputs_kv)
                self.put_variable("cache", "cached_key", _keys_layout(key))
                self.put_variable("cache", "cached_value", _values_layout(value))
            else:
                keys = self.get_variable("cache", "cached_key")
                values = self.get_variable("cache", "cached_value")
                return self._attend_cached(query, keys, values, dense_mask(mask), w_o)
        else:
            if self.static_kv or not cfg.fused_qkv:
                key, value = project_kv(inputs_kv)  # [batch, kv_len, heads, d_k or d_v]
            cached = self._append_to_cache(key, value, dense_mask(mask)) if decode else None
            if cached is not None:
                return self._attend_cached(query, *cached, w_o)

        dropout_rng = None
        if not deterministic and cfg.attention_dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        if (
            cfg.attention == "dot_product_attention"
            and dropout_rng is None
            and not self.is_mutable_collection("intermediates")
        ):
            out = fused_dot_product_attention(query, key, value, mask)
        else:
            out, weights = dot_product_attention(
                query,
                key,
                value,
                dense_mask(mask),
                dropout_rate=cfg.attention_dropout_rate,
                dropout_rng=dropout_rng,
            )  # [batch, q_len, heads, d_v]
            # Kept for attention maps: `apply(..., mutable=["intermediates"])` returns them.
            self.sow("intermediates", "attention_weights", weights)
        return self._output(out, w_o)

    def _output(self, out: Array, w_o: Array) -> Array:
        """[batch, q_len, heads, d_v] -> W^O -> [batch, q_len, d_model]."""
        out = matmul(out, w_o, contract=2)  # [batch, q_len, d_model]
        return constrain(out, (BATCH, LENGTH, EMBED))

    def _attend_cached(
        self, query: Array, keys: Array, values: Array, mask: Array, w_o: Array
    ) -> Array:
        out, weights = cached_attention(query, keys, values, mask)
        self.sow("intermediates", "attention_weights", weights)
        return self._output(out, w_o)

    def _append_to_cache(
        self, key: Array, value: Array, mask: Array
    ) -> tuple[Array, Array, Array] | None:
        """Writes one step's key/value [batch, 1, heads, d] at the cache index and returns the
        whole cache (keys [batch, heads, d_k, max_length], values [batch, heads, max_length,
        d_v]) with `mask` limited to positions <= index.

        On the call that creates the cache (zeros sized by that call's [batch, max_length]
        keys and values) it writes nothing and returns None."""
        is_initialized = self.has_variable("cache", "cached_key")
        b, length, h, d_k = key.shape
        cached_key = self.variable("cache", "cached_key", jnp.zeros, (b, h, d_k, length), key.dtype)
        cached_value = self.variable(
            "cache", "cached_value", jnp.zeros, _values_layout(value).shape, value.dtype
        )
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not is_initialized:
            return None
        if length != 1:
            raise ValueError(f"decode steps take one position at a time, got {length}")
        i = cache_index.value
        cached_key.value = lax.dynamic_update_slice_in_dim(
            cached_key.value, _keys_layout(key), i, axis=3
        )
        cached_value.value = lax.dynamic_update_slice_in_dim(
            cached_value.value, _values_layout(value), i, axis=2
        )
        cache_index.value = i + 1
        # Slots past the index are not written yet: the new query must not see them.
        mask = mask & (jnp.arange(cached_key.value.shape[3]) <= i)[None, None, None, :]
        keys = constrain(cached_key.value, (BATCH, HEADS, None, LENGTH))
        values = constrain(cached_value.value, (BATCH, HEADS, LENGTH, None))
        return keys, values, mask


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
            dot_general=dense_dot_general,
            kernel_init=_init(nn.initializers.xavier_uniform(), ("embed", "mlp")),
            bias_init=_init(nn.initializers.zeros, ("mlp",)),
            name="wi",
        )(x)
        h = nn.relu(h) if cfg.activation == "relu" else nn.gelu(h)
        h = constrain(h, (BATCH, LENGTH, MLP))
        out = nn.Dense(
            cfg.d_model,
            dtype=dtype,
            dot_general=dense_dot_general,
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
        return matmul(x, embedding.T, preferred_element_type=jnp.float32)


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
