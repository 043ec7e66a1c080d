"""Label-smoothed cross-entropy (section 5.4), summed over non-padding target tokens.

Three formulations compute the same value. `one_hot` builds the smoothed target distribution
(as flax/examples/wmt does); `integer` needs only log-sum-exp, the target logit and the logit
sum, never a [batch, length, vocab] distribution. `benchmarks/loss.py` times them. `chunked`
(`chunked_loss_and_metrics`) fuses the pre-softmax projection into the loss and runs both over
chunks of the target length, so the [batch, length, vocab] logits never exist at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from transformer.layers import BATCH, LENGTH, VOCAB, argmax, constrain, matmul
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


# The metric sums of `loss_and_metrics`, in the order `chunked_loss_and_metrics` stacks them.
METRICS = ("loss_sum", "nll_sum", "correct", "tokens")


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


def chunked_loss_and_metrics(
    hidden: Array, weight: Array, targets: Array, label_smoothing: float, chunks: int
) -> tuple[Array, dict[str, Array]]:
    """`loss_and_metrics` of the logits hidden @ weight^T, computed in `chunks` pieces of the
    target length (or the largest number below it that divides the length) without ever
    holding the whole [batch, length, vocab] logits.

    hidden: [batch, length, d_model] (the decoder's output, in the compute dtype); weight:
    [vocab, d_model] float32 (the pre-softmax projection, tied or not); targets: [batch,
    length] int. The logits are float32, as the model's are.

    Differentiating it costs no extra FLOPs: the forward pass of each chunk also forms the
    loss's gradient with respect to its logits (softmax - smoothed targets) and at once the
    two gradient products, d hidden = g @ weight and d weight += g^T @ hidden, so the backward
    pass only scales them by the incoming cotangent. Only the loss sum is differentiable (the
    metrics are counts). Without differentiation (evaluation) the gradient products are not
    computed.
    """
    batch, length, d_model = hidden.shape
    if chunks < 1:
        raise ValueError(f"config.cross_entropy_chunks={chunks} must be positive.")
    # The value does not depend on the chunking, so a length it does not divide takes the
    # largest divisor below it.
    chunks = max(n for n in range(1, min(chunks, length) + 1) if length % n == 0)
    vocab = weight.shape[0]
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    # [chunks, batch, length / chunks, ...]: chunking the length keeps the batch sharding.
    hidden_chunks = jnp.swapaxes(hidden.reshape(batch, chunks, -1, d_model), 0, 1)
    target_chunks = jnp.swapaxes(targets.reshape(batch, chunks, -1), 0, 1)

    def chunk(h: Array, w: Array, t: Array, with_grads: bool):
        """Metric sums [4] of one chunk, and with_grads: (d hidden, d weight) of its loss."""
        logits = matmul(h, w.T, preferred_element_type=jnp.float32)
        logits = constrain(logits, (BATCH, LENGTH, VOCAB))
        _, metrics = loss_and_metrics(logits, t, label_smoothing, "integer")
        sums = jnp.stack([metrics[key] for key in METRICS])
        if not with_grads:
            return sums, None
        # d loss / d logits = softmax - q: q sums to 1 (1 - eps + (vocab - 1) * low). XLA
        # shares the softmax's max and exponentials with the loss's log-sum-exp.
        smoothed = low + (confidence - low) * jax.nn.one_hot(t, vocab, dtype=jnp.float32)
        weights = (t != PAD_ID).astype(jnp.float32)[..., None]
        grad = ((jax.nn.softmax(logits, axis=-1) - smoothed) * weights).astype(h.dtype)
        grad_hidden = matmul(grad, w, preferred_element_type=jnp.float32).astype(h.dtype)
        grad_weight = lax.dot_general(
            grad.reshape(-1, vocab),
            h.reshape(-1, d_model),
            (((0,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        return sums, (grad_hidden, grad_weight)

    def forward(h_chunks: Array, w: Array, t_chunks: Array, with_grads: bool):
        w = w.astype(h_chunks.dtype)

        def body(grad_weight, xs):
            h, t = xs
            sums, grads = chunk(h, w, t, with_grads)
            if grads is None:
                return grad_weight, (sums, None)
            return grad_weight + grads[1], (sums, grads[0])

        zeros = jnp.zeros(weight.shape, jnp.float32) if with_grads else None
        grad_weight, (sums, grad_hidden) = lax.scan(body, zeros, (h_chunks, t_chunks))
        return jnp.sum(sums, axis=0), grad_hidden, grad_weight

    @jax.custom_vjp
    def loss_sums(h_chunks: Array, w: Array, t_chunks: Array) -> Array:
        return forward(h_chunks, w, t_chunks, with_grads=False)[0]

    def loss_sums_fwd(h_chunks: Array, w: Array, t_chunks: Array):
        sums, grad_hidden, grad_weight = forward(h_chunks, w, t_chunks, with_grads=True)
        return sums, (grad_hidden, grad_weight)

    def loss_sums_bwd(residuals, cotangent: Array):
        grad_hidden, grad_weight = residuals
        scale = cotangent[0]  # METRICS[0] is the loss sum; the others are not differentiable.
        return scale.astype(grad_hidden.dtype) * grad_hidden, scale * grad_weight, None

    loss_sums.defvjp(loss_sums_fwd, loss_sums_bwd)
    sums = loss_sums(hidden_chunks, weight, target_chunks)
    return sums[0], dict(zip(METRICS, sums, strict=True))
