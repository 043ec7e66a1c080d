"""Label-smoothed cross-entropy (section 5.4), summed over non-padding target tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from transformer.special_tokens import PAD_ID

Array = jax.Array


def loss_and_metrics(
    logits: Array, targets: Array, label_smoothing: float
) -> tuple[Array, dict[str, Array]]:
    """The smoothed loss summed over non-padding tokens, and sums to normalise later.

    logits: [batch, length, vocab] float32; targets: [batch, length] int. The smoothed target
    distribution q puts 1 - eps on the target and eps / (vocab - 1) on every other token (as
    tensor2tensor does), and the loss is H(q, p) = -sum_v q_v log p_v; its minimum is the
    entropy of q, not 0. With log p_v = logits_v - logsumexp(logits) it needs only the
    log-sum-exp, the target's logit and the logits' sum: no [batch, length, vocab] q.

    Returns (loss_sum, {"loss_sum", "nll_sum", "correct", "tokens"}), float32 scalars; nll is
    -log p(target), and a token is correct where it is the argmax (ties to the lowest id, as
    greedy decoding picks).
    """
    vocab = logits.shape[-1]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    lse = jax.nn.logsumexp(logits, axis=-1)  # [batch, length]
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    target_log_p = target_logit - lse
    all_log_p = jnp.sum(logits, axis=-1) - vocab * lse  # sum_v log p_v
    loss = -((confidence - low) * target_log_p + low * all_log_p)
    correct = jnp.argmax(logits, axis=-1) == targets
    weights = (targets != PAD_ID).astype(jnp.float32)
    loss_sum = jnp.sum(loss * weights)
    return loss_sum, {
        "loss_sum": loss_sum,
        "nll_sum": jnp.sum(-target_log_p * weights),
        "correct": jnp.sum(correct * weights),
        "tokens": jnp.sum(weights),
    }
