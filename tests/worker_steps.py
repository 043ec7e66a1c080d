"""Builders of toy steps for tests/test_benchmark_worker.py, in a module that imports no JAX
(a real library's step is in the tests themselves)."""

import os
import sys
import time
from pathlib import Path


def spinning_step(seconds: float):
    """A step that spends `seconds` of CPU time."""

    def run() -> None:
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass

    return run, {"parameters": 0, "description": "a spinning step"}


def exiting_step(code: int):
    """A step whose process exits with `code` (as one killed for memory would vanish)."""
    return (lambda: os._exit(code)), {"parameters": 0, "description": "an exiting step"}


def doubling_step():
    """A step that returns its argument doubled, with its pid."""

    def run(x: int) -> tuple[int, int]:
        return 2 * x, os.getpid()

    return run, {"parameters": 0, "description": "a doubling step"}


def meeting_step(folder: str, me: str, other: str):
    """A step that leaves a file named `me` in `folder`, then waits (up to a minute) for one
    named `other`; it returns whether that came: whether the two steps ran at once."""

    def run() -> bool:
        Path(folder, me).touch()
        deadline = time.monotonic() + 60
        while not Path(folder, other).exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    return run, {"parameters": 0, "description": "a meeting step"}


def jax_step(use_jax: bool):
    """A step in a process that imports JAX, and runs on it only if `use_jax`."""
    import jax.numpy as jnp

    def run() -> None:
        if use_jax:
            jnp.ones(4).block_until_ready()

    return run, {"parameters": 0, "description": "a JAX step"}


def failing_step():
    def run() -> None:
        raise ValueError("the batch does not fit this model")

    return run, {"parameters": 0, "description": "a failing step"}


def jax_imported() -> bool:
    return "jax" in sys.modules


def spin_half_a_second() -> None:
    start = time.process_time()
    while time.process_time() - start < 0.5:
        pass
