"""The attention of one forward pass, read out of the model: every layer's weights and each
head's queries, keys and values, for attention maps and the explorer.

The attention modules `sow` them into the "intermediates" collection, which a forward pass
returns only when asked (`mutable=["intermediates"]`); training never asks.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from transformer.model import DecoderOnlyLM, Transformer

# What each attention module sows, with the shape of one example's array.
SOWN = {
    "attention_weights": "[heads, q_len, kv_len]",
    "queries": "[q_len, heads, d_k]",
    "keys": "[kv_len, heads, d_k]",
    "values": "[kv_len, heads, d_v]",
}


def attention_readout(
    model: Transformer | DecoderOnlyLM, params: Any, *inputs: np.ndarray
) -> dict[str, dict[str, jax.Array]]:
    """A teacher-forced pass over one example: `inputs` are the model's positional arguments
    with a batch of one (the encoder-decoder's inputs [1, src_len] and targets [1, tgt_len],
    the language model's targets [1, len]).

    Returns {"encoder/layer_0/self_attention": {"attention_weights": ..., "queries": ...,
    "keys": ..., "values": ...}, "decoder/layer_0/cross_attention": ..., ...}, each array
    float32 with the batch axis dropped, shaped as SOWN says. Row i of a decoder map is the
    step that predicts target token i, whose query comes from the token before it. Traceable:
    `jax.jit` it with the model bound."""
    _, state = model.apply({"params": params}, *inputs, mutable=["intermediates"])
    out: dict[str, dict[str, jax.Array]] = {}
    for key, value in traverse_util.flatten_dict(state["intermediates"]).items():
        if key[-1] in SOWN:  # sow keeps a tuple of calls; there is one.
            module = "/".join(key[:-1])
            out.setdefault(module, {})[key[-1]] = value[0][0].astype(jnp.float32)
    return out


def attention_weights(
    model: Transformer, params: Any, inputs: np.ndarray, targets: np.ndarray
) -> dict[str, np.ndarray]:
    """Attention weights of one pair: inputs [1, src_len], targets [1, tgt_len] (EOS-ended).

    Returns {"encoder/layer_0/self_attention": [heads, src_len, src_len],
    "decoder/layer_0/self_attention": [heads, tgt_len, tgt_len],
    "decoder/layer_0/cross_attention": [heads, tgt_len, src_len], ...}."""
    readout = attention_readout(model, params, inputs, targets)
    return {name: np.asarray(arrays["attention_weights"]) for name, arrays in readout.items()}
