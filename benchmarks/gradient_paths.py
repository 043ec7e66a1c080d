"""How much gradient reaches each input position of a trained model: the paper's "maximum
path length" claim (Table 1), measured on real weights.

For one (source, target) pair, the loss of output position t, loss_t = -log p(y_t | ...), is
differentiated with respect to every embedding vector the model looked up: the source's and
the decoder input's (BOS, y_1, ..., y_T-1). `nn.intercept_methods` adds a zero perturbation
to each lookup, so the model's code is not touched: encoders look up first, then decoders.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from transformer.special_tokens import PAD_ID


def embedding_gradient_norms(
    model: nn.Module, params: Any, inputs: jax.Array, targets: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """inputs [1, src_len], targets [1, tgt_len] (PAD after the pair) -> (||d loss_t / d
    e_source_j|| [tgt_len, src_len], ||d loss_t / d e_decoder_input_i|| [tgt_len, tgt_len]).
    Jit-able; rows and columns past the pair's tokens are to be ignored."""
    zeros = (
        jnp.zeros((*inputs.shape, model.config.d_model)),
        jnp.zeros((*targets.shape, model.config.d_model)),
    )

    def losses(deltas: tuple[jax.Array, jax.Array]) -> jax.Array:
        looked_up = []

        def perturb(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if isinstance(context.module, nn.Embed) and context.method_name == "__call__":
                out = out + deltas[len(looked_up)].astype(out.dtype)
                looked_up.append(out.shape)
            return out

        with nn.intercept_methods(perturb):
            logits = model.apply({"params": params}, inputs, targets)
        logp = jax.nn.log_softmax(logits[0])
        return -jnp.take_along_axis(logp, targets[0][:, None], axis=-1)[:, 0]

    source, target = jax.jacrev(losses)(zeros)  # [tgt_len, 1, len, d] each
    return jnp.linalg.norm(source[:, 0], axis=-1), jnp.linalg.norm(target[:, 0], axis=-1)


def by_distance(
    model: nn.Module, params: Any, pairs: list[tuple[np.ndarray, np.ndarray]], width: int
) -> dict[str, dict[int, list[float]]]:
    """Gradient norms of every pair (EOS-ended id arrays, each at most `width` long) grouped
    by distance: {"target": {t - i: [...]}, "source": {|j - a_t|: [...]}}, where i <= t is a
    decoder input position and a_t = round(t (S - 1) / (T - 1)) the source position on the
    diagonal of a pair of lengths S and T (a monotone alignment, near enough for captions)."""
    norms = jax.jit(lambda p, x, y: embedding_gradient_norms(model, p, x, y))
    grouped = {"target": defaultdict(list), "source": defaultdict(list)}
    for source, target in pairs:
        inputs = np.full((1, width), PAD_ID, np.int32)
        targets = np.full((1, width), PAD_ID, np.int32)
        inputs[0, : len(source)], targets[0, : len(target)] = source, target
        to_source, to_target = (np.asarray(a) for a in norms(params, inputs, targets))
        s_len, t_len = len(source), len(target)
        for t in range(t_len):
            for i in range(t + 1):
                grouped["target"][t - i].append(float(to_target[t, i]))
            diagonal = round(t * (s_len - 1) / max(t_len - 1, 1))
            for j in range(s_len):
                grouped["source"][abs(j - diagonal)].append(float(to_source[t, j]))
    return grouped
