"""Builds upcoming batches on a background thread, so the device never waits on the host."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections import deque
from collections.abc import Callable, Iterator

import jax
import numpy as np

from transformer import sharding
from transformer.special_tokens import PAD_ID


@dataclasses.dataclass(frozen=True)
class ReadyBatch:
    step: int
    batch: dict[str, jax.Array]  # Global arrays on the mesh.
    real_tokens: int  # Non-padding tokens, both sides, this process's rows.
    total_tokens: int  # All token slots, both sides, this process's rows.


def prefetch(
    batches: Callable[[int], dict[str, np.ndarray]],
    steps: range,
    batch_sharding: jax.sharding.NamedSharding,
    depth: int = 2,
) -> Iterator[ReadyBatch]:
    """Yields the batch of every step in `steps`, computed up to `depth` steps ahead."""

    def make(step: int) -> ReadyBatch:
        local = batches(step)
        sides = (local["inputs"], local["targets"])
        return ReadyBatch(
            step=step,
            batch=sharding.global_batch(local, batch_sharding),
            real_tokens=sum(int(np.count_nonzero(x != PAD_ID)) for x in sides),
            total_tokens=sum(x.size for x in sides),
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque[concurrent.futures.Future] = deque()
        upcoming = iter(steps)
        for step in upcoming:
            pending.append(pool.submit(make, step))
            if len(pending) > depth:
                break
        while pending:
            ready = pending.popleft().result()
            next_step = next(upcoming, None)
            if next_step is not None:
                pending.append(pool.submit(make, next_step))
            yield ready
