"""Which positions attend to which: padding, the decoder's causal mask, packed segments.

A mask is [batch, 1, q_len, kv_len] bool, True where a query may attend to a key. Padding
(PAD_ID) ends a row, as every pipeline here makes rows, so an unpacked row's mask is also
given by its length, which cuDNN's fused attention applies itself (`AttentionMask`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from transformer.sharding import BATCH, constrain
from transformer.special_tokens import PAD_ID

Array = jax.Array


def row_lengths(tokens: Array) -> Array:
    """[batch, length] -> [batch] int32: the tokens before each row's padding (every pipeline
    here pads at the end of a row)."""
    return constrain(jnp.sum(tokens != PAD_ID, axis=1, dtype=jnp.int32), (BATCH,))


def padding_mask(q_tokens: Array, kv_tokens: Array) -> Array:
    """[batch, 1, q_len, kv_len] bool: True where neither query nor key is padding."""
    return (q_tokens != PAD_ID)[:, None, :, None] & (kv_tokens != PAD_ID)[:, None, None, :]


def causal_mask(length: int) -> Array:
    """[1, 1, length, length] bool: position i may attend to positions <= i."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def segment_mask(q_segments: Array, kv_segments: Array) -> Array:
    """[batch, 1, q_len, kv_len] bool: True where query and key are in the same packed segment."""
    return q_segments[:, None, :, None] == kv_segments[:, None, None, :]


@struct.dataclass
class AttentionMask:
    """dense: [batch, 1, q_len, kv_len] bool, True where a query may attend to a key. Where
    that is exactly "neither is padding" (with `causal`, "and key <= query"), q_lengths and
    kv_lengths [batch] count each row's tokens, which cuDNN's fused attention applies itself
    instead of reading `dense` as an [L, L] bias (packed rows have none)."""

    dense: Array
    q_lengths: Array | None = None
    kv_lengths: Array | None = None
    causal: bool = struct.field(pytree_node=False, default=False)

    def __post_init__(self) -> None:
        if (self.q_lengths is None) != (self.kv_lengths is None):
            raise ValueError("AttentionMask takes both q_lengths and kv_lengths, or neither.")


def attention_mask(
    q_tokens: Array,
    kv_tokens: Array,
    q_segments: Array | None = None,
    kv_segments: Array | None = None,
    causal: bool = False,
) -> AttentionMask:
    """Queries `q_tokens` [batch, q_len] may attend to keys `kv_tokens` [batch, kv_len]:
    neither is padding, both are in one packed segment (where segment ids are given) and,
    with `causal`, the key comes no later than the query. Unpacked rows get their lengths."""
    mask = padding_mask(q_tokens, kv_tokens)
    if causal:
        mask &= causal_mask(q_tokens.shape[1])
    if q_segments is not None and kv_segments is not None:
        return AttentionMask(mask & segment_mask(q_segments, kv_segments))
    return AttentionMask(mask, row_lengths(q_tokens), row_lengths(kv_tokens), causal)
