"""XLA flags of the test processes and the subprocesses they start."""

import os

# The tests compile many small programs and run each briefly: without LLVM's optimisation
# passes compiling takes a fifth less time (the same HLO, so the same computation). Runs
# that are timed or train for minutes (the quickstart, the soak, benchmarks) keep XLA's
# defaults.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def one_device_env(**extra: str) -> dict[str, str]:
    """This process's environment for a subprocess on one CPU device (XLA's default)."""
    return {**os.environ, "XLA_FLAGS": FAST_COMPILE, **extra}
