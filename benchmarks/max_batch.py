"""`benchmarks/train_step.py --max_batch`: the largest batch whose train step fits.

A multiple of 8 rows, searched with `model.remat` "none" and "block": on an accelerator by
running a step until it runs out of memory; on CPU, whose memory sets no limit of its own, by
XLA's account of the compiled step (arguments + outputs + temporaries - donated) against a
cap.
"""

from __future__ import annotations

import dataclasses

import jax

from benchmarks.machine import gib
from benchmarks.steps import build_step, xla_step_bytes
from benchmarks.workloads import batch_shape, random_batch, with_rows
from transformer.config import Config

MAX_BATCH_LIMIT = 1 << 14  # Rows; the search goes no higher.


def fits(config: Config, rows: int, cap_bytes: int | None) -> tuple[bool, str, int | None]:
    """(whether a step of `rows` rows fits, a note, XLA's account of it in bytes or None): on
    an accelerator (`cap_bytes` None) the step is run, on CPU XLA's account is held against
    the cap."""
    config = with_rows(config, rows)
    step = None
    try:
        step = build_step(config, random_batch(config))
        if cap_bytes is None:
            step.run()
            return True, "ran", xla_step_bytes(step.memory)
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower():
            return False, "out of memory", xla_step_bytes(step.memory) if step else None
        raise
    need = xla_step_bytes(step.memory)
    if need is None:
        raise SystemExit("This backend gives no memory analysis: --memory_cap_gb cannot work.")
    return need <= cap_bytes, gib(need), need


def next_rows(
    accounts: dict[int, int | None], budget: int | None, good: int, bad: int, bisect: bool
) -> int:
    """The next batch to try, a multiple of 8 strictly between `good` (fits) and `bad` (does
    not): where the line through XLA's accounts at `good` and `bad` (before any failed, at the
    two largest batches tried) crosses the budget, an eighth of the bracket inside it at least;
    the midpoint when `bisect` or without two accounts."""
    mid = (good + bad) // 16 * 8
    margin = 8
    if accounts.get(good) is not None and accounts.get(bad) is not None:
        points = [(good, accounts[good]), (bad, accounts[bad])]
        # At least an eighth of the bracket from either end: where the account is not a line
        # (flat at first, then rising), the bracket still shrinks by that much at every try.
        margin = max(8, (bad - good) // 8)
    else:
        points = sorted((r, n) for r, n in accounts.items() if n is not None and r <= good)[-2:]
    if bisect or budget is None or len(points) < 2 or points[1][1] == points[0][1]:
        return mid
    (r0, n0), (r1, n1) = points
    guess = int(r0 + (budget - n0) * (r1 - r0) / (n1 - n0))
    return min(max(guess, good + margin), bad - margin) // 8 * 8


def largest_batch(
    config: Config, cap_bytes: int | None, budget: int | None, limit: int = MAX_BATCH_LIMIT
) -> int:
    """The largest multiple of 8 rows up to `limit` that fits (`fits`), or 0.

    Tries 8 and 16 rows, then where the line through XLA's accounts of the step crosses the
    `budget` (bytes), narrowing the bracket of fitting and failing batches; after a try that
    did not halve the bracket, the next one bisects it. On a GPU each try compiles and runs a
    step: ref-small under 2 GiB took 6 tries with remat and 6 without, where doubling from 8
    rows and then bisecting took 10 and 14."""
    limit = limit // 8 * 8
    accounts: dict[int, int | None] = {}
    good, bad = 0, limit + 8  # Known to fit / not to fit (limit + 8: not tried).
    rows, bisect = 8, False
    while bad - good > 8:
        width = bad - good
        fit, note, accounts[rows] = fits(config, rows, cap_bytes)
        print(f"    {rows:6d} rows: {'fits' if fit else 'does not fit'} ({note})", flush=True)
        if not fit and rows == 8:
            return 0
        good, bad = (rows, bad) if fit else (good, rows)
        bisect = not bisect and bad - good > width // 2
        rows = 16 if rows == 8 and fit else next_rows(accounts, budget, good, bad, bisect)
    return good


def describe_rows(rows: int, length: int) -> str:
    """A found batch; one at the search's limit may not be the largest that fits."""
    more = " (the search's limit: larger batches were not tried)" if rows == MAX_BATCH_LIMIT else ""
    return f"{rows:6d} rows = {rows * length:,} tokens{more}"


def max_batch_mode(config: Config, memory_cap_gb: float | None) -> None:
    """Prints the largest batch with remat "none" and "block" (each as soon as found)."""
    platform = jax.devices()[0].platform
    cap = None
    if platform == "cpu":
        if not memory_cap_gb:
            raise SystemExit("On CPU --max_batch needs --memory_cap_gb (the CPU sets no limit).")
        cap = budget = int(memory_cap_gb * 2**30)
        print(f"CPU: a batch fits if XLA's account of the step is <= {gib(cap)}.")
    else:
        stats = jax.devices()[0].memory_stats() or {}
        budget = stats.get("bytes_limit")
        note = f" (the allocator's limit: {gib(budget)})" if budget else ""
        print(f"{platform}: a batch fits if one step runs without running out of memory{note}.")
    _, length = batch_shape(config)
    found = {}
    for remat in ("none", "block"):
        print(f"  model.remat={remat}:")
        variant = dataclasses.replace(config, model=dataclasses.replace(config.model, remat=remat))
        found[remat] = describe_rows(largest_batch(variant, cap, budget), length)
        print(f"  -> {found[remat]}", flush=True)  # Kept if a later search is cut short.
    print(f"\nLargest batch (rows of {length} tokens per side):")
    for remat, rows in found.items():
        print(f"  remat={remat:5s} {rows}")
