"""Our compiled train step on one device, and timing steps in turns.

The step is the one users run: `transformer.trainer.build` (the jitted, state-donating train
step with Adam, label smoothing and dropout) on one device, compiled ahead
(`.lower().compile()`), then called on one fixed batch (each call blocked until done).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from benchmarks.machine import fastest_flops, process_cpu_seconds
from transformer import cpu, sharding, trainer
from transformer.config import Config, MeshConfig
from transformer.dry_run import step_bytes


@dataclasses.dataclass
class Step:
    """A compiled train step on one device and the state it advances."""

    run: Callable[[], None]  # One step, blocked until done.
    params: Any  # The parameters' shapes.
    compile_seconds: float
    memory: Any  # XLA's CompiledMemoryStats, or None where the backend has none.


def build_step(config: Config, batch: dict[str, np.ndarray], plain: Sequence[str] = ()) -> Step:
    """Our train step for `config` on `batch`, traced and compiled with the CPU forms named
    in `plain` turned off (transformer.cpu.plain; none by default)."""
    mesh = sharding.make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    placed = trainer.build(config, mesh)
    forms_off = cpu.plain(*plain) if plain else contextlib.nullcontext()
    with forms_off, trainer.mesh_context(mesh, config):
        state = placed.init(jax.random.key(config.seed))
        device_batch = sharding.global_batch(batch, placed.batch_sharding)
        start = time.perf_counter()
        compiled = placed.train_step.lower(state, device_batch).compile()
        compile_seconds = time.perf_counter() - start
    holder = [state]

    def run() -> None:
        holder[0], metrics = compiled(holder[0], device_batch)
        jax.block_until_ready((holder[0], metrics))

    try:
        memory = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        memory = None
    return Step(run, placed.abstract_state.params, compile_seconds, memory)


def xla_step_bytes(memory: Any) -> int | None:
    """Bytes the compiled step holds at once (`dry_run.step_bytes`), None without analysis."""
    return None if memory is None else step_bytes(memory)


def measured_peak_flops(dtype: Any, n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of a jitted n x n matmul in `dtype`: the fastest of `repeats` (a peak)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    return fastest_flops(lambda: jax.block_until_ready(matmul(a, b)), 2 * n**3, repeats)


def turn_order(names: Sequence[str], rounds: int) -> list[str]:
    """The order in which `time_alternating` times its runs: every round starts one run
    further on, so that each run follows each other one as often (up to one round)."""
    names = list(names)
    order = []
    for round_ in range(rounds):
        shift = round_ % len(names)
        order += names[shift:] + names[:shift]
    return order


def time_alternating(
    runs: dict[str, Callable[[], None]],
    steps: int,
    warmup: int,
    cpu_clocks: dict[str, Callable[[], float]] | None = None,
    lead_in: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall, CPU) seconds of `steps` timed steps of each run, the runs taking turns
    (`turn_order`) after `warmup` untimed steps each. In each turn a run takes `lead_in`
    untimed steps right before its timed one. A run's CPU time is read from its entry in
    `cpu_clocks` (a worker process's own), else from this process.

    A lead-in step makes the timed step follow one of its own, as in training: on CPU under
    glibc's malloc the first step after seconds of another run's faults in memory that the
    machine has meanwhile reclaimed (on a VM with free-page reporting, from the hypervisor:
    up to 4x the system time), a cost that back-to-back training steps never pay."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    clocks = {name: (cpu_clocks or {}).get(name, process_cpu_seconds) for name in runs}
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu_time: dict[str, list[float]] = {name: [] for name in runs}
    for name in turn_order(runs, steps):
        run = runs[name]
        for _ in range(lead_in):
            run()
        start, start_cpu = clock(), clocks[name]()
        run()
        wall[name].append(clock() - start)
        cpu_time[name].append(clocks[name]() - start_cpu)
    return wall, cpu_time
