"""What a benchmark ran on, printed with its figures."""

from __future__ import annotations

import os

import jax

from transformer.allocator import current_allocator


def describe_machine() -> str:
    """The JAX device, the host CPU model and core count, the JAX version and the malloc
    (on CPU it changes step times by up to 2x: transformer/allocator.py)."""
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
