"""What a benchmark ran on and how busy the machine was, printed with its figures.

Imports no JAX at the top: a compared library's worker process (benchmarks/compare/) reads
its CPU time and peak memory through this module without loading JAX.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time
from collections.abc import Callable

from transformer.allocator import current_allocator


def describe_machine() -> str:
    """The JAX device, the host CPU model and core count, the JAX version and the malloc
    (on CPU it changes step times by up to 2x: transformer/allocator.py)."""
    import jax

    device = jax.devices()[0]
    cpu = "?"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (
        f"{device.platform} ({device.device_kind}); host CPU {cpu}, {os.cpu_count()} cores; "
        f"JAX {jax.__version__}; {current_allocator()}"
    )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def process_cpu_seconds() -> float:
    """This process's CPU time so far (user + system, all threads), in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def jax_started() -> bool:
    """Whether this process has started a JAX backend. Asking for jax.devices() would start
    one, and on a GPU host claim GPU memory in a worker that never used JAX."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # No public API answers this without starting one.

    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def peak_memory() -> tuple[str, int]:
    """(what, bytes) of this process: its JAX device's peak where that is not the CPU and
    JAX has run here, else the process's peak RSS."""
    if jax_started():
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            return "device peak_bytes_in_use", int(stats["peak_bytes_in_use"])
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return "process peak RSS", int(rss_kib) * 1024


def fastest_flops(run: Callable[[], object], flops: float, repeats: int) -> float:
    """flops / the fastest of `repeats` timed calls of `run`, after one untimed call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return flops / min(times)


# ------------------------------------------------------------------ other load
@dataclasses.dataclass(frozen=True)
class CpuSample:
    """CPU seconds so far, summed over cores: the machine's busy and stolen time
    (/proc/stat; None where it cannot be read) and this process's own, all its threads."""

    wall: float
    busy: float | None
    steal: float | None
    own: float


def sample_cpu(stat_path: str = "/proc/stat") -> CpuSample:
    busy = steal = None
    try:
        with open(stat_path, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        fields = []
    if fields[:1] == ["cpu"] and len(fields) >= 9:
        # user nice system idle iowait irq softirq steal ... (guest time is inside user).
        user, nice, system, _, _, irq, softirq, stolen = (int(x) for x in fields[1:9])
        tick = os.sysconf("SC_CLK_TCK")
        busy = (user + nice + system + irq + softirq) / tick
        steal = stolen / tick
    return CpuSample(time.perf_counter(), busy, steal, process_cpu_seconds())


def other_load(
    start: CpuSample, end: CpuSample, cores: int, ours_elsewhere: float = 0.0
) -> tuple[str, bool]:
    """(a line saying how much CPU time other processes and the hypervisor took between the
    two samples, whether that is enough to slow the figures measured between them).
    `ours_elsewhere`: CPU seconds that the benchmark's own worker processes spent between
    the samples, which are not other load.

    Unlike the load average, which lags a minute behind and counts our own threads, this is
    the machine's busy time less the benchmark's, so a run right after another is not
    mistaken for a busy machine, nor a busy one for idle."""
    if start.busy is None or end.busy is None or start.steal is None or end.steal is None:
        return "Other processes' CPU time: unknown (no /proc/stat)", False
    capacity = max(end.wall - start.wall, 1e-9) * cores
    others = max(end.busy - start.busy - (end.own - start.own) - ours_elsewhere, 0.0)
    stolen = end.steal - start.steal
    line = (
        f"Other processes' CPU time: {others:.1f} core-s of {capacity:.1f} "
        f"({100 * others / capacity:.1f}% of the machine); stolen by the hypervisor: "
        f"{stolen:.1f} core-s ({100 * stolen / capacity:.1f}%)"
    )
    return line, (others + stolen) > 0.05 * capacity
