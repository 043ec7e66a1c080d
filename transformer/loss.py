"""Label-smoothed cross-entropy (section 5.4), summed over non-padding target tokens.

Two formulations compute the same value. `one_hot` builds the smoothed target distribution
(as flax/examples/wmt does); `integer` needs only log-sum-exp, the target logit and the logit
sum, never a [batch, length, vocab] distribution. `benchmarks/loss.py` times them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from transformer.layers import argmax
from transformer.special_tokens import PAD_ID

Array = jax.Array


def smoothed_cross_entropy(
    logits: Array, targets: Array, label_smoothing: float, formulation: str = "one_hot"
) -> Array:
    """Per-token loss [batch, length] against the smoothed distribution q.

    q puts 1 - eps on the target and eps / (vocab - 1) on every other token, so the loss is
    H(q, p) = -sum_v q_v log p_v (its minimum is the entropy of q, not 0).
    logits: [batch, length, vocab] float32; targets: [batch, length] int.
    """
    vocab = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    if formulation == "one_hot":
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        soft = low + (confidence - low) * jax.nn.one_hot(targets, vocab, dtype=logits.dtype)
        return -jnp.sum(soft * log_probs, axis=-1)
    if formulation == "integer":
        # log p_v = logits_v - lse, so sum_v q_v log p_v needs only three reductions.
        lse = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        logit_sum = jnp.sum(logits, axis=-1)
        target_lp = target_logit - lse
        all_lp = logit_sum - vocab * lse
        return -((confidence - low) * target_lp + low * all_lp)
    raise ValueError(f"Unknown cross-entropy formulation {formulation!r}.")


def loss_and_metrics(
    logits: Array, targets: Array, label_smoothing: float, formulation: str
) -> tuple[Array, dict[str, Array]]:
    """Summed smoothed loss over non-padding tokens, and summed metrics to normalise later.

    Returns (loss_sum, {"loss_sum", "nll_sum", "correct", "tokens"}), all float32 scalars.
    """
    weights = (targets != PAD_ID).astype(jnp.float32)
    loss = smoothed_cross_entropy(logits, targets, label_smoothing, formulation)
    # -log p[target] without a [batch, length, vocab] log-softmax (XLA shares the reductions
    # with the "integer" loss).
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
    correct = (argmax(logits) == targets).astype(jnp.float32)
    loss_sum = jnp.sum(loss * weights)
    return loss_sum, {
        "loss_sum": loss_sum,
        "nll_sum": jnp.sum(nll * weights),
        "correct": jnp.sum(correct * weights),
        "tokens": jnp.sum(weights),
    }
