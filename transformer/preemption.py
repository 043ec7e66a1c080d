"""Preemption: SIGTERM (a scheduler's notice) or Ctrl-C ends training at a step boundary.

Inside `StopSignals()`, the first SIGTERM or SIGINT only records the request; the training loop
asks `should_stop(step)` after every step and, on True, saves a checkpoint and returns. A
second signal of the same kind acts as it would have without us (SIGTERM kills, Ctrl-C raises
KeyboardInterrupt), for when the save itself is stuck. A signal the process was started
with ignored (`nohup`, or SIGINT in a shell's `cmd &`) stays ignored.

With several processes every host must stop at the same step, or the others would wait forever
in the next step's collectives. JAX's preemption service (started by `jax.distributed
.initialize`) hears SIGTERM on any host and agrees on a step where all of them stop, which
Orbax's `CheckpointManager.reached_preemption(step)` reports; so once `jax.distributed` is
initialized, SIGTERM is left to it and Ctrl-C is passed on to it as a SIGTERM. A single
process without it needs no agreement: a flag suffices. What Orbax does not have is kept here:
the second signal, and a signal the process was started with ignored.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import jax


class StopSignals:
    """A context manager that turns SIGTERM and SIGINT into `should_stop(step) -> True`."""

    def __init__(self, reached_preemption: Callable[[int], bool]) -> None:
        """reached_preemption(step): whether all hosts agree to stop after `step`
        (`checkpoint.Checkpointer.reached_preemption`), asked once jax.distributed runs."""
        self.reached_preemption = reached_preemption
        self.received: str | None = None  # "SIGTERM" or "SIGINT" once one arrived here.
        self._previous: dict[int, Any] = {}
        self._use_service = jax.distributed.is_initialized()

    def __enter__(self) -> StopSignals:
        # Python runs signal handlers in the main thread only and lets only it install them.
        if threading.current_thread() is threading.main_thread():
            ours = (signal.SIGINT,) if self._use_service else (signal.SIGTERM, signal.SIGINT)
            for signum in ours:
                current = signal.getsignal(signum)
                # None: set outside Python, so it could not be restored. SIG_IGN: whoever
                # started us asked that the signal be ignored (as `nohup` and `cmd &` do for
                # SIGINT); it stays ignored.
                if current is None or current == signal.SIG_IGN:
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received == name:  # The second one: behave as if we had never intercepted.
            previous = self._previous.pop(signum)
            signal.signal(signum, previous)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signum)
            return
        self.received = name
        if self._use_service:
            os.kill(os.getpid(), signal.SIGTERM)  # To JAX's preemption notifier.
        # No printing here: the main thread may be inside a write to the same stream.

    def should_stop(self, step: int) -> bool:
        """True once training should end after `step` (the same step on every host).

        Called after every step; on one process it only reads a flag (no wait for the device).
        """
        if self._use_service:
            return self.reached_preemption(step)
        return jax.process_count() == 1 and self.received is not None

    def reason(self) -> str:
        return self.received or "a preemption notice (SIGTERM to one of the hosts)"
