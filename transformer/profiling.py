"""A profile of chosen train steps, for TensorBoard's profile plugin and Perfetto.

With `profile_num_steps` N > 0, steps M + 1 to M + N (M = `profile_skip_steps`, so that
compiling and warming up stay out) are traced by `jax.profiler` into
WORKDIR/tensorboard/plugins/profile/<time>/: an .xplane.pb that TensorBoard's profile
plugin (`pip install xprof`) reads, and perfetto_trace.json.gz, which ui.perfetto.dev opens.
Train steps are annotated with their number; evaluation and checkpoint saves are spans.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import jax


class StepProfiler:
    """Starts the trace before the first chosen step and stops it after the last, once the
    device has finished it (a trace stopped earlier would miss the step's device work)."""

    def __init__(self, workdir: str, skip_steps: int, num_steps: int):
        self.directory = os.path.join(workdir, "tensorboard")
        self.first, self.last = skip_steps, skip_steps + num_steps - 1  # Step indices.
        self.enabled, self.active = num_steps > 0, False

    @contextlib.contextmanager
    def step(self, index: int) -> Iterator[None]:
        """Around the train step of step `index` (0-based; it makes step index + 1)."""
        if self.enabled and index == self.first:
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.active = True
        with jax.profiler.StepTraceAnnotation("train", step_num=index + 1):
            yield

    def after(self, index: int, state: Any) -> None:
        """After step `index` and its bookkeeping: the last chosen one stops the trace."""
        if self.active and index >= self.last:
            jax.block_until_ready(state)
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def span(name: str) -> contextlib.AbstractContextManager:
    """A named span in the trace (evaluation, checkpoint saves); free when not tracing."""
    return jax.profiler.TraceAnnotation(name)
