"""A compared library's step (a train step, a batch's decoding) in a process of its own,
run on command by the benchmark.

In one process, a library's step runs among the other libraries' threads, their shared
libraries (flax/examples/wmt's code imports TensorFlow) and the memory their malloc keeps:
with all three in one process under tcmalloc our ref-base step took 4.28-4.41 s on a 2-core
EPYC, in a process of its own 3.84 s, taking turns the same way. Each library in its own
process steps as it would alone, while the steps still take turns, so machine noise falls on
all of them alike. A step's wall time is taken around its command (a pipe round trip, well
under a millisecond); its CPU time and peak memory are its own process's.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import resource
import sys
from collections.abc import Callable
from typing import Any


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _resolve(name: str) -> Callable[..., Any]:
    """ "package.module:function" -> the function."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def _jax_started() -> bool:
    """Whether this process has started a JAX backend. Asking for jax.devices() would start
    one, and on a GPU host claim GPU memory in a worker that never used JAX."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # No public API answers this without starting one.

    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def peak_memory() -> tuple[str, int]:
    """(what, bytes) of this process: its JAX device's peak where that is not the CPU and
    JAX has run here, else the process's peak RSS."""
    if _jax_started():
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            return "device peak_bytes_in_use", int(stats["peak_bytes_in_use"])
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return "process peak RSS", int(rss_kib) * 1024


def _describe(error: BaseException) -> str:
    """A SystemExit's own message (our refusals), else the exception's type and message."""
    if isinstance(error, SystemExit):
        return str(error.code)
    return f"{type(error).__name__}: {error}"


def _serve(conn: Any, builder: str, args: tuple, env: dict[str, str]) -> None:
    """The worker process: builds the step, then answers commands until "stop"."""
    os.environ.update(env)
    try:
        run, info = _resolve(builder)(*args)
    except BaseException as error:  # SystemExit carries the builder's message.
        conn.send(("error", _describe(error)))
        return
    conn.send(("ready", {**info, "pid": os.getpid(), "cpu_seconds": _cpu_seconds()}))
    while True:
        command, payload = conn.recv()
        try:
            if command == "step":
                output = run(*payload)
                result: Any = (_cpu_seconds(), output)
            elif command == "call":
                result = _resolve(payload)()
            elif command == "stop":
                conn.send(("ok", peak_memory()))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
        except BaseException as error:  # Reported to the benchmark, which stops.
            conn.send(("error", _describe(error)))
            return
        conn.send(("ok", result))


class StepWorker:
    """A step built by `builder(*args)` in a fresh (spawned) process.

    `builder` names a function ("benchmarks.torch_step:build_torch_step") that returns
    (one blocking step, a dict of facts about it); `info` holds those facts and the pid. The
    step's arguments and result travel by pipe (pickled), so they should be small or numpy.
    `env` is set in the worker before it builds (e.g. so a second JAX process does not claim
    the GPU memory the first one holds). A builder's error or a worker's death raises
    SystemExit naming the worker.
    """

    def __init__(self, name: str, builder: str, *args: Any, env: dict[str, str] | None = None):
        self.name = name
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, builder, args, env or {}), daemon=True
        )
        self._process.start()
        child.close()
        self.info = self._receive()
        self.cpu_seconds = self.info["cpu_seconds"]  # The worker's CPU time so far.

    def _receive(self) -> Any:
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise SystemExit(
                f"The {self.name} worker process died (exit code {self._process.exitcode})."
            ) from None
        if kind == "error":
            self._process.join(5)
            raise SystemExit(f"The {self.name} worker: {payload}")
        return payload

    def submit(self, *args: Any) -> None:
        """Starts one step on `args` in the worker; `result()` waits for it. Several workers
        submitted to before any result is asked for step at the same time."""
        self._conn.send(("step", args))

    def result(self) -> Any:
        """The submitted step's result, once it is done."""
        self.cpu_seconds, output = self._receive()
        return output

    def run(self, *args: Any) -> Any:
        """One step on `args` in the worker; returns its result when it is done."""
        self.submit(*args)
        return self.result()

    def call(self, function: str) -> Any:
        """The result of the argument-free `function` ("module:name") run in the worker."""
        self._conn.send(("call", function))
        return self._receive()

    def close(self) -> tuple[str, int]:
        """Stops the worker; returns its peak memory as (what, bytes)."""
        self._conn.send(("stop", None))
        peak = self._receive()
        self._process.join(30)
        self._conn.close()
        return peak
