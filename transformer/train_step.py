"""The train state and the pure, jit-able train and eval steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from transformer.config import Config
from transformer.loss import loss_and_metrics

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position, which is the step."""

    step: jax.Array  # int32 scalar: steps done (updates applied or skipped).
    params: Any
    opt_state: Any
    nonfinite_total: jax.Array  # int32 scalar: steps skipped for a NaN/Inf loss, grad or update.
    nonfinite_streak: jax.Array  # int32 scalar: how many of those came last, in a row.


def model_inputs(kind: str, batch: Batch) -> Batch:
    """The batch fields the model of `kind` consumes (a language model reads targets only)."""
    if kind == "decoder_only":
        return {k: v for k, v in batch.items() if k.startswith("targets")}
    return batch


def model_loss(
    config: Config,
    model: nn.Module,
    params: Any,
    batch: Batch,
    deterministic: bool,
    rngs: dict[str, jax.Array],
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The summed smoothed loss of `batch` and its metric sums (`loss.loss_and_metrics`)."""
    inputs = model_inputs(config.model.kind, batch)
    logits = model.apply({"params": params}, **inputs, deterministic=deterministic, rngs=rngs)
    return loss_and_metrics(logits, batch["targets"], config.label_smoothing)


def make_train_step(
    config: Config, model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The train step: gradients of the token-normalised loss, then one Adam update, skipped
    where anything is NaN or Inf (`apply_if_finite`). The dropout key of a step is
    fold_in(seed, step), so a resumed run draws the masks an uninterrupted one would."""
    base_key = jax.random.key(
        config.seed, impl={"threefry": "threefry2x32"}.get(config.dropout_rng, config.dropout_rng)
    )

    def micro_step(params: Any, batch: Batch, rng: jax.Array):
        def loss_fn(p):
            return model_loss(config, model, p, batch, deterministic=False, rngs={"dropout": rng})

        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, sums

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(base_key, state.step)
        grads, sums = accumulated(micro_step, state.params, batch, rng, config.grad_accum_steps)
        grads = jax.tree.map(lambda g: g / jnp.maximum(sums["tokens"], 1.0), grads)
        new_state, metrics = apply_if_finite(state, grads, sums["loss_sum"], tx)
        return new_state, dict(sums, learning_rate=schedule(state.step), **metrics)

    return train_step


def accumulated(micro_step: Callable, params: Any, batch: Batch, rng: jax.Array, accum: int):
    """(summed gradients, summed metrics) of `micro_step(params, micro_batch, rng)` over
    `accum` strided micro-batches (micro-batch a = rows a, a + accum, ..., so each keeps its
    share of every device): exactly one large batch's sums, in less memory."""
    if accum == 1:
        return micro_step(params, batch, rng)
    # [batch, ...] -> [accum, batch / accum, ...]
    micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(-1, accum, *x.shape[1:]), 0, 1), batch)

    def body(carry, xs):
        micro_batch, i = xs
        sums = micro_step(params, micro_batch, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, sums), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(micro_step, params, first, rng))
    return jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))[0]


def apply_if_finite(
    state: TrainState, grads: Any, loss_sum: jax.Array, tx: optax.GradientTransformation
) -> tuple[TrainState, dict[str, jax.Array]]:
    """The optimizer's update of `state`, or, where the loss, a gradient or the update holds
    NaN or Inf, the previous parameters and optimizer state, counted in the state and the
    metrics (decided on the device, so the host never waits for it). The step counter, which
    is the data position, advances either way."""
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    # A NaN or Inf anywhere in the gradients or the update shows in its norm.
    finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
    finite &= jnp.isfinite(optax.tree.norm(updates))
    params, opt_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (optax.apply_updates(state.params, updates), opt_state),
        (state.params, state.opt_state),
    )
    skipped = jnp.where(finite, 0, 1).astype(jnp.int32)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        nonfinite_total=state.nonfinite_total + skipped,
        nonfinite_streak=(state.nonfinite_streak + 1) * skipped,
    )
    return new_state, {
        "grad_norm": grad_norm,
        "nonfinite": skipped,
        "nonfinite_total": new_state.nonfinite_total,
        "nonfinite_streak": new_state.nonfinite_streak,
    }


def make_eval_step(config: Config, model: nn.Module) -> Callable[[Any, Batch], dict[str, Any]]:
    """Summed loss metrics of a batch with dropout off."""

    def eval_step(params, batch):
        return model_loss(config, model, params, batch, deterministic=True, rngs={})[1]

    return eval_step
