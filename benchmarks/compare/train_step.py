"""`benchmarks/train_step.py --compare torch flax`: other libraries' train steps on our batch,
timed in turns with ours.

`torch` (needs `pip install -e '.[bench]'`) is the same model in PyTorch eager
(benchmarks/compare/torch_step.py: `nn.TransformerEncoder/DecoderLayer`, post-LN, no
attention biases so the parameter counts match, dropout in the same places,
`F.cross_entropy(label_smoothing=...)`, `torch.optim.Adam`, fp32, `torch.set_num_threads(cores)`).
PyTorch's label smoothing spreads eps over all `vocab` tokens, ours over the `vocab - 1`
non-targets: the same cost. `flax` (`--flax_wmt DIR`) is flax/examples/wmt's own train step
(its model, loss and `jax.pmap`-ed step, imported from the example's folder of a Flax source
tree; see benchmarks/compare/flax_wmt.py) with our workload's sizes.

Each library steps in a process of its own (benchmarks/compare/worker.py says why), its CPU
time and peak memory its own process's. PyTorch's BLAS and XLA's matmul kernels differ in
speed on CPU, which bounds the ratio of two matmul-bound steps: PyTorch's float32 4096^3
matmul is measured around the timed steps, as ours is.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks.compare.worker import StepWorker
from benchmarks.machine import gib
from transformer.config import Config

LIBRARIES = ("torch", "flax")
TORCH_PEAK = "benchmarks.compare.torch_step:measured_torch_peak_flops"


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses --compare flax without --flax_wmt; keeps our process from claiming the
    accelerator's memory that the flax worker needs (read when JAX's backend starts)."""
    if "flax" in args.compare:
        if not args.flax_wmt:
            parser.error("--compare flax needs --flax_wmt DIR (benchmarks/compare/flax_wmt.py).")
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"


class ComparedSteps:
    """The compared libraries' steps on `batch`, one worker process each; `close()` them."""

    def __init__(
        self,
        config: Config,
        batch: dict[str, np.ndarray],
        names: list[str],
        flax_wmt: str | None,
        our_parameters: int,
    ):
        self.workers: dict[str, StepWorker] = {}
        self.memory: dict[str, tuple[str, int] | None] = {}
        self.torch_peaks: list[float] = []
        try:
            if "flax" in names:  # A second JAX process must not claim the accelerator.
                no_prealloc = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
                builder = "benchmarks.compare.flax_wmt:build_flax_wmt_step"
                self.workers["flax"] = StepWorker(
                    "flax", builder, config, batch, flax_wmt, env=no_prealloc
                )
            if "torch" in names:
                builder = "benchmarks.compare.torch_step:build_torch_step"
                self.workers["torch"] = StepWorker("torch", builder, config, batch)
        except BaseException:
            self.close()
            raise
        for name, worker in self.workers.items():
            count = worker.info["parameters"]
            unequal = name != "flax" and count != our_parameters
            print(
                f"{worker.info['description']}, process {worker.info['pid']}: {count:,} parameters"
                + (f" (ours {our_parameters:,}: NOT equal)" if unequal else "")
            )

    @property
    def runs(self) -> dict:
        return {name: worker.run for name, worker in self.workers.items()}

    @property
    def cpu_clocks(self) -> dict:
        """Each worker's own CPU time, as of its latest answer."""
        return {name: (lambda w=w: w.cpu_seconds) for name, w in self.workers.items()}

    def cpu_seconds(self) -> float:
        """All workers' CPU time so far (not other load on the machine)."""
        return sum(worker.cpu_seconds for worker in self.workers.values())

    def measure_matmul(self) -> None:
        """PyTorch's matmul peak, in its worker (called before and after the timed steps)."""
        if "torch" in self.workers:
            self.torch_peaks.append(self.workers["torch"].call(TORCH_PEAK))

    def close(self) -> None:
        """Stops the workers, keeping their peak memory; safe to call again."""
        for name, worker in self.workers.items():
            peak = worker.close()
            if peak is not None:
                self.memory[name] = peak

    def print_ratios(self, tokens_per_second: dict[str, float], peak: float) -> None:
        if self.torch_peaks:
            best = max(self.torch_peaks)
            print(
                f"  PyTorch's float32 4096^3 matmul: {best / 1e9:,.1f} GFLOP/s, "
                f"{best / peak:.2f}x the peak above (MFU is against ours for all)"
            )
        for name in self.workers:
            ratio = tokens_per_second["ours"] / tokens_per_second[name]
            print(f"  ours / {name} tokens/s: {ratio:.2f}x")

    def print_memory(self) -> None:
        for name, (kind, size) in self.memory.items():
            print(f"  {name}: {gib(size)} ({kind}, in its own process)")
