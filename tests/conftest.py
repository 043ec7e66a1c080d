"""Eight virtual CPU devices, set before JAX is imported, so tests exercise real sharding."""

import atexit
import os
import shutil
import sys
import tempfile

# configs/ is imported by path in tests, as train.py does.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.xla_flags import FAST_COMPILE

os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8 {FAST_COMPILE}"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One compilation cache for the whole run, shared by pytest's workers and every subprocess
# they start (the tiny models recompile the same executables in many tests). The first
# process to load this file (the controller) makes it, so each run starts cold, as in CI.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    cache = tempfile.mkdtemp(prefix="transformer-tests-jax-cache-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker more than there are cores (at most 4, as --maxprocesses): a
    worker spends much of its time compiling on one thread or waiting for its subprocesses."""
    return min(4, (os.cpu_count() or 1) + 1)
