"""Greedy decoding for the encoder-decoder model, entirely inside one jit.

The encoder runs once; each step re-runs the decoder over the fixed-size output buffer and
takes the argmax at the next position, until every sentence has produced EOS.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from transformer.model import Transformer, shift_right, default_positions
from transformer.special_tokens import EOS_ID, PAD_ID

Array = jax.Array


def greedy_decode(model: Transformer, params: Any, inputs: Array, max_length: int) -> Array:
    """inputs: [batch, src_len] -> output ids [batch, max_length], PAD after EOS."""
    batch = inputs.shape[0]
    variables = {"params": params}
    encoded = model.apply(variables, inputs, method=Transformer.encode)
    tokens = jnp.full((batch, max_length), PAD_ID, jnp.int32)
    positions = default_positions(tokens)

    def cond(carry):
        i, _, done = carry
        return (i < max_length) & ~jnp.all(done)

    def body(carry):
        i, tokens, done = carry
        logits = model.apply(
            variables, encoded, inputs, shift_right(tokens, positions), positions,
            method=Transformer.decode,
        )  # [batch, max_length, vocab]
        next_token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, i, 1, False), axis=-1)
        next_token = jnp.where(done, PAD_ID, next_token).astype(jnp.int32)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, next_token, i, 1)
        return i + 1, tokens, done | (next_token == EOS_ID)

    _, tokens, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), tokens, jnp.zeros((batch,), bool))
    )
    return tokens
