"""The paper's optimizer (section 5.3): Adam with a warm-up then inverse-square-root decay."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from transformer.config import Config


def paper_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> optax.Schedule:
    """lr(step) = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), step from 1.

    optax counts updates from 0, so update n uses step n + 1.
    """

    def schedule(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        return scale * d_model**-0.5 * jnp.minimum(step**-0.5, step * warmup_steps**-1.5)

    return schedule


def make_optimizer(config: Config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Adam(b1, b2, eps) on the paper's schedule, after optional global-norm clipping."""
    schedule = paper_schedule(config.model.d_model, config.warmup_steps, config.learning_rate_scale)
    adam = optax.adam(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    if config.grad_clip_norm > 0:
        adam = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adam)
    return adam, schedule
