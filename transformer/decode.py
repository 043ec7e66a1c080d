"""Greedy decoding with a key/value cache, entirely inside one jit.

The encoder runs once. The decoder then runs one token per step (`decode=True`): each layer
appends the new position's keys and values to its cache and attends over the cache, and the
encoder output's cross-attention keys and values are projected once, when the cache is made.
A step thus costs one position, not the whole output buffer, and the loop stops as soon as
every sentence has produced EOS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from transformer.model import DecoderOnlyLM, Transformer
from transformer.special_tokens import BOS_ID, EOS_ID, PAD_ID

Array = jax.Array
Cache = Any  # The "cache" collection: a pytree of per-layer keys, values and indices.
# (token [batch, 1], position [batch, 1], cache) -> (logits [batch, vocab], cache)
StepFn = Callable[[Array, Array, Cache], tuple[Array, Cache]]


def init_cache(
    model: Transformer | DecoderOnlyLM,
    params: Any,
    batch: int,
    max_length: int,
    encoded: Array | None = None,
    inputs: Array | None = None,
) -> Cache:
    """An empty cache for `batch` rows of up to `max_length` decoded tokens.

    For the Transformer it also holds the cross-attention keys and values of `encoded`
    [batch, src_len, d_model], whose padding `inputs` [batch, src_len] gives; both are then
    required. Under jit only those projections are computed: the pass that sizes the cache
    has no other output that is used.
    """
    dummy = jnp.full((batch, max_length), BOS_ID, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(max_length), dummy.shape)
    if isinstance(model, Transformer):
        if encoded is None or inputs is None:
            raise ValueError("The Transformer's cache needs `encoded` and `inputs`.")
        args, method = (encoded, inputs, dummy, positions), Transformer.decode
    else:
        args, method = (dummy, positions), DecoderOnlyLM.decode
    _, state = model.apply({"params": params}, *args, decode=True, method=method, mutable=["cache"])
    return state["cache"]


def greedy_decode(model: Transformer, params: Any, inputs: Array, max_length: int) -> Array:
    """inputs: [batch, src_len] -> output ids [batch, max_length] int32, PAD after EOS."""
    encoded = model.apply({"params": params}, inputs, method=Transformer.encode)
    cache = init_cache(model, params, inputs.shape[0], max_length, encoded, inputs)

    def step(token: Array, position: Array, cache: Cache) -> tuple[Array, Cache]:
        logits, state = model.apply(
            {"params": params, "cache": cache},
            encoded,
            inputs,
            token,
            position,
            decode=True,
            method=Transformer.decode,
            mutable=["cache"],
        )
        return logits[:, 0], state["cache"]

    forced = jnp.full((inputs.shape[0], max_length), PAD_ID, jnp.int32)
    return _greedy_loop(step, cache, forced)


def greedy_decode_lm(model: DecoderOnlyLM, params: Any, prompt: Array, max_length: int) -> Array:
    """prompt: [batch, prompt_len <= max_length], PAD-padded at the end of each row ->
    [batch, max_length] int32: each row's prompt, then its greedy continuation, PAD after EOS.
    """
    batch, prompt_len = prompt.shape
    cache = init_cache(model, params, batch, max_length)

    def step(token: Array, position: Array, cache: Cache) -> tuple[Array, Cache]:
        logits, state = model.apply(
            {"params": params, "cache": cache},
            token,
            position,
            decode=True,
            method=DecoderOnlyLM.decode,
            mutable=["cache"],
        )
        return logits[:, 0], state["cache"]

    forced = jnp.pad(prompt.astype(jnp.int32), ((0, 0), (0, max_length - prompt_len)))
    return _greedy_loop(step, cache, forced)


def _greedy_loop(step: StepFn, cache: Cache, forced: Array) -> Array:
    """Runs `step` from BOS at position 0 until every row has EOS or `forced` [batch,
    max_length] is full. Where `forced` is not PAD its token is taken instead of the argmax
    (a prompt), so prompts of different lengths decode in one batch."""
    batch, max_length = forced.shape

    def cond(carry: tuple[Array, ...]) -> Array:
        i, _, _, done, _ = carry
        return (i < max_length) & ~jnp.all(done)

    def body(carry: tuple[Array, ...]) -> tuple[Array, ...]:
        i, token, tokens, done, cache = carry
        # Step i reads output i-1 (BOS at i = 0) at position i and predicts output i.
        position = jnp.full((batch, 1), i, jnp.int32)
        logits, cache = step(token[:, None], position, cache)  # [batch, vocab]
        forced_i = forced[:, i]
        token = jnp.where(forced_i != PAD_ID, forced_i, jnp.argmax(logits, axis=-1))
        token = jnp.where(done, PAD_ID, token).astype(jnp.int32)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, i, axis=1)
        return i + 1, token, tokens, done | (token == EOS_ID), cache

    carry = (
        jnp.int32(0),
        jnp.full((batch,), BOS_ID, jnp.int32),
        jnp.full((batch, max_length), PAD_ID, jnp.int32),
        jnp.zeros((batch,), bool),
        cache,
    )
    _, _, tokens, _, _ = jax.lax.while_loop(cond, body, carry)
    return tokens
