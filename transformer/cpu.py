"""Faster forms of a few operations for XLA's CPU backend.

Each computes what the plain function it stands in for computes, and each was measured worth
more than 5% of a train step's time or memory there (docs/performance.md, "CPU forms"). A
plain function opts in with one decorator, `@cpu.faster(form)`: on the CPU backend its calls
go to `form`, elsewhere the plain code runs. `plain()` turns forms off, so that the
benchmarks and tests can compare each with the code it replaces.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_turned_off: set[str] = set()  # Names of forms that `plain()` turned off.


def faster(form: Callable) -> Callable[[Callable], Callable]:
    """Decorator: the decorated function runs `form` instead on the CPU backend."""

    def wrap(plain_function: Callable) -> Callable:
        @functools.wraps(plain_function)
        def call(*args: Any, **kwargs: Any) -> Any:
            if jax.default_backend() == "cpu" and form.__name__ not in _turned_off:
                return form(*args, **kwargs)
            return plain_function(*args, **kwargs)

        return call

    return wrap


@contextlib.contextmanager
def plain(*names: str) -> Iterator[None]:
    """While open, the named forms (all, if none is named) are off: functions traced inside
    run their plain code on the CPU too."""
    chosen = set(names or FORMS)
    unknown = chosen - set(FORMS)
    if unknown:
        raise ValueError(f"No CPU form named {sorted(unknown)}; there are {sorted(FORMS)}.")
    before = set(_turned_off)
    _turned_off.update(chosen)
    try:
        yield
    finally:
        _turned_off.clear()
        _turned_off.update(before)


def flat_matmul(x: jax.Array, w: jax.Array, contract: int = 1, preferred_element_type=None):
    """`layers.matmul` as one 2-D product, [rows, prod(in)] x [prod(in), prod(out)].

    Over [batch, length, ...] XLA's CPU backend computes the weight gradient by transposing
    the output gradient and running the matmul in a slow layout; over flattened rows it is one
    plain [in, rows] x [rows, out] matmul. The reshapes are free (row-major bitcasts)."""
    in_shape, out_shape = w.shape[:contract], w.shape[contract:]
    lead = x.shape[: x.ndim - contract]
    y = lax.dot_general(
        x.reshape(-1, math.prod(in_shape)),
        w.reshape(math.prod(in_shape), -1),
        (((1,), (0,)), ((), ())),
        preferred_element_type=preferred_element_type,
    )
    return y.reshape(*lead, *out_shape)


def threefry_bits(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """`layers.random_bits` for a threefry key: the bits of `jax.random.bits`, computed in
    line so that XLA fuses the cipher into the dropout that consumes them. JAX lowers its own
    threefry on CPU as a loop over rounds that stores every round's words (and keeps the masks
    for the backward pass). Other keys (rbg) go to jax.random.bits."""
    if str(jax.random.key_impl(rng)) != "threefry2x32":
        return jax.random.bits(rng, shape, jnp.uint32)
    if math.prod(shape) >= 2**32:
        raise ValueError(f"threefry_bits covers fewer than 2^32 elements, not {shape}.")
    index = jnp.zeros(shape, jnp.uint32)  # Each element's flat index, as JAX counts them.
    stride = 1
    for dim in reversed(range(len(shape))):  # Per-axis iotas: partitionable over a mesh.
        index = index + lax.broadcasted_iota(jnp.uint32, shape, dim) * np.uint32(stride)
        stride *= shape[dim]
    k0, k1 = jax.random.key_data(rng)
    high, low = _threefry2x32(k0, k1, jnp.zeros(shape, jnp.uint32), index)
    return high ^ low  # jax_threefry_partitionable's bits: the two output words XORed.


def _threefry2x32(k0, k1, x0, x1):
    """The Threefry-2x32 block cipher (20 rounds), as jax.random's threefry2x32 computes it."""
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in rotations[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def recomputed_after_cotangent(layer: type[nn.Module], policy, static_argnums: tuple[int, ...]):
    """`model.rematerialized` whose backward pass recomputes each layer only once the layer
    above has sent its cotangent. Called like the layer class: `(...)(config, name=...)(*args)`.

    JAX ties the recomputation to the cotangent with an optimization barrier, which XLA's CPU
    compiler removes before it schedules; it then recomputes every layer at the start of the
    backward pass, and all the activations remat was to drop are live at once. Here the
    residuals (the layer's inputs and parameters) each gain a zero computed from one element
    of the cotangent: a data dependence no pass removes. Values and gradients are unchanged."""
    checkpointed = nn.remat(layer, static_argnums=static_argnums, policy=policy)

    def forward(module: nn.Module, *args):
        def apply(m: nn.Module, *dynamic):
            rest = iter(dynamic)
            return m(*(a if i in static_argnums else next(rest) for i, a in enumerate(args, 1)))

        dynamic = [a for i, a in enumerate(args, 1) if i not in static_argnums]
        return nn.vjp(apply, module, *dynamic)  # vjp_fn's leaves are the residuals.

    def backward(*static_residuals_cotangent):
        *_, vjp_fn, cotangent = static_residuals_cotangent
        element = cotangent.reshape(-1)[0]
        zero = jnp.where(jnp.isfinite(element), element, 0) * 0

        def tie(residual):
            if jnp.issubdtype(residual.dtype, jnp.floating):
                return residual + zero.astype(residual.dtype)
            return residual

        return jax.tree.map(tie, vjp_fn)(cotangent)

    tied = nn.custom_vjp(
        lambda module, *args: module(*args),
        forward_fn=forward,
        backward_fn=backward,
        nondiff_argnums=static_argnums,
    )

    def build(*module_args, **module_kwargs):
        return functools.partial(tied, checkpointed(*module_args, **module_kwargs))

    return build


# Scores per block: a whole number of AVX-512 registers; 8,000 scores make 125 blocks.
BLOCK = 64


def _blocks(scores: jax.Array) -> jax.Array:
    """[rows, n] -> [rows, ceil(n / BLOCK), BLOCK], the last block filled up with -inf."""
    rows, n = scores.shape
    padded = jnp.pad(scores, ((0, 0), (0, -n % BLOCK)), constant_values=-jnp.inf)
    return padded.reshape(rows, -(-n // BLOCK), BLOCK)


def blocked_argmax(scores: jax.Array) -> jax.Array:
    """`decode.argmax` in two steps: the block of BLOCK scores that holds the row's maximum
    (its first, for ties), then the maximum within that block. XLA's CPU backend computes an
    argmax as one reduction of (value, index) pairs, which it does not vectorise: 1.9 ms for
    [64, 8000] on one core, against 0.12 ms for this. Rows holding NaN may differ (XLA's CPU
    max reduction does not propagate NaN)."""
    *lead, n = scores.shape
    blocks = _blocks(scores.reshape(-1, n))
    block = jnp.argmax(jnp.max(blocks, axis=-1), axis=-1)  # [rows]
    within = jnp.argmax(jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0], axis=-1)
    return (block * BLOCK + within).astype(jnp.int32).reshape(lead)


def blocked_top_k(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`decode.top_k` over the k blocks of BLOCK scores with the largest maxima: each of the
    row's k best scores lies in one of them (a block holding one has a maximum at least as
    good, ties going to the lower block as to the lower index). XLA's CPU TopK sorts every
    row: 5.2 ms for the k = 8 best of [256, 8000] on one core, against 1 ms for this. Rows
    holding NaN may differ, as for blocked_argmax."""
    rows = scores.shape[0]
    blocks = _blocks(scores)
    if k > blocks.shape[1]:
        return lax.top_k(scores, k)
    _, chosen = lax.top_k(jnp.max(blocks, axis=-1), k)
    chosen = jnp.sort(chosen, axis=-1)  # In index order, so that ties go to the lower index.
    candidates = jnp.take_along_axis(blocks, chosen[:, :, None], axis=1).reshape(rows, k * BLOCK)
    values, where = lax.top_k(candidates, k)
    block = jnp.take_along_axis(chosen, where // BLOCK, axis=1)
    return values, (block * BLOCK + where % BLOCK).astype(jnp.int32)


DECODING_FORMS = ("blocked_argmax", "blocked_top_k")  # Used by decoding alone.
FORMS = ("flat_matmul", "threefry_bits", "recomputed_after_cotangent", *DECODING_FORMS)
