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

import contextlib
import importlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from benchmarks.machine import peak_memory, process_cpu_seconds


def _resolve(name: str) -> Callable[..., Any]:
    """ "package.module:function" -> the function."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


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
    conn.send(("ok", (process_cpu_seconds(), {**info, "pid": os.getpid()})))
    while True:
        command, payload = conn.recv()
        try:
            if command == "step":
                result: Any = run(*payload)
            elif command == "call":
                result = _resolve(payload)()
            elif command == "stop":
                conn.send(("ok", (process_cpu_seconds(), peak_memory())))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
        except BaseException as error:  # Reported to the benchmark, which stops.
            conn.send(("error", _describe(error)))
            return
        conn.send(("ok", (process_cpu_seconds(), result)))


@contextlib.contextmanager
def _main_script_left_behind() -> Iterator[None]:
    """A spawned process first imports the parent's __main__ script (as __mp_main__), so that
    objects defined there can be unpickled. Workers take nothing from it, and importing
    train_step.py or decode.py would load JAX and Flax into a PyTorch worker (about 150 MiB of
    its peak RSS): while this is open, spawn sees no script to import."""
    main = sys.modules["__main__"]
    saved = {key: main.__dict__[key] for key in ("__file__", "__spec__") if key in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class StepWorker:
    """A step built by `builder(*args)` in a fresh (spawned) process.

    `builder` names a function ("benchmarks.compare.torch_step:build_torch_step") that returns
    (one blocking step, a dict of facts about it); `info` holds those facts and the pid. The
    step's arguments and result travel by pipe (pickled), so they should be small or numpy.
    `env` is set in the worker before it builds (e.g. so a second JAX process does not claim
    the GPU memory the first one holds). The worker does not import the parent's script.
    A builder's error or a worker's death raises SystemExit naming the worker, after which
    the worker is closed; `cpu_seconds` is the worker's CPU time at its latest answer.
    """

    def __init__(self, name: str, builder: str, *args: Any, env: dict[str, str] | None = None):
        self.name = name
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, builder, args, env or {}), daemon=True
        )
        with _main_script_left_behind():
            self._process.start()
        child.close()
        self.cpu_seconds = 0.0
        self.info = self._receive()

    def _send(self, message: tuple[str, Any]) -> None:
        if self._conn.closed:
            raise SystemExit(f"The {self.name} worker has already stopped.")
        try:
            self._conn.send(message)
        except OSError:  # A broken pipe: the worker is gone.
            self._fail(f"The {self.name} worker process died")

    def _receive(self) -> Any:
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            self._fail(f"The {self.name} worker process died")
        if kind == "error":
            self._fail(f"The {self.name} worker: {payload}", exit_code=False)
        self.cpu_seconds, result = payload
        return result

    def _fail(self, message: str, exit_code: bool = True) -> NoReturn:
        self._conn.close()
        self._process.join(5)
        if exit_code:
            message += f" (exit code {self._process.exitcode})."
        raise SystemExit(message) from None

    def submit(self, *args: Any) -> None:
        """Starts one step on `args` in the worker; `result()` waits for it. Several workers
        submitted to before any result is asked for step at the same time."""
        self._send(("step", args))

    def result(self) -> Any:
        """The submitted step's result, once it is done."""
        return self._receive()

    def run(self, *args: Any) -> Any:
        """One step on `args` in the worker; returns its result when it is done."""
        self.submit(*args)
        return self.result()

    def call(self, function: str) -> Any:
        """The result of the argument-free `function` ("module:name") run in the worker."""
        self._send(("call", function))
        return self._receive()

    def close(self) -> tuple[str, int] | None:
        """Stops the worker; returns its peak memory as (what, bytes), or None where it had
        already stopped (after an error: safe in a `finally`)."""
        if self._conn.closed:
            return None
        self._send(("stop", None))
        peak = self._receive()
        self._process.join(30)
        self._conn.close()
        return peak
