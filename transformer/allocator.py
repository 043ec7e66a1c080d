"""Which malloc this process runs with: on CPU it decides how much of a train step is spent
faulting in fresh memory.

XLA on CPU allocates a step's temporaries (gigabytes for the paper's base model) with malloc
and frees them when the step ends. glibc's malloc hands allocations that large to mmap and
back to the kernel on free, so every step faults in and zeroes its buffers anew: on a 2-core
EPYC that was a quarter of the ref-base step's CPU time and half its wall time. tcmalloc
keeps freed memory for the next step (README, Training). An allocator can only be chosen
before the process starts (LD_PRELOAD), so this module only reports it and says where one is.
"""

from __future__ import annotations

import ctypes.util
import os

# Allocators that replace glibc's malloc when preloaded: their libraries are lib<name>*.so.
_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
_TCMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib/libtcmalloc_minimal.so.4",
)


def current_allocator(maps_path: str = "/proc/self/maps") -> str:
    """The malloc in use: "tcmalloc", "jemalloc" or "mimalloc" where one of those is mapped
    into the process, else "glibc malloc" on Linux, "system malloc" where /proc is absent."""
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as f:
            libraries = {line.rsplit("/", 1)[-1].strip() for line in f if "/" in line}
    except OSError:
        return "system malloc"
    for name in _ALLOCATORS:
        if any(lib.startswith("lib" + name) for lib in libraries):
            return name
    return "glibc malloc"


def find_tcmalloc() -> str | None:
    """The path of an installed libtcmalloc_minimal (Debian/Ubuntu: libtcmalloc-minimal4),
    or None."""
    for path in _TCMALLOC_PATHS:
        if os.path.exists(path):
            return path
    name = ctypes.util.find_library("tcmalloc_minimal")
    return name if name and os.path.isabs(name) else None


def cpu_allocator_hint(platform: str) -> str | None:
    """One line for a run on `platform` that could be faster with tcmalloc preloaded, naming
    the library to preload; None on accelerators or when another allocator is in use."""
    if platform != "cpu" or current_allocator() != "glibc malloc":
        return None
    path = find_tcmalloc()
    how = (
        f"LD_PRELOAD={path}"
        if path
        else "LD_PRELOAD=libtcmalloc_minimal.so.4 (Debian/Ubuntu package libtcmalloc-minimal4)"
    )
    return (
        "Note: training on CPU with glibc malloc, which faults in every step's buffers afresh; "
        f"start the run with {how} to reuse them (README, Training)."
    )
