"""benchmarks/gpu.sh (the GPU figures of the Performance section in one call) refuses, with a
reason, a machine it cannot measure, before it spends any of a GPU lease."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.sh"


def run_script(
    out: Path | str, python: str, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """gpu.sh run with OUT_DIR `out`, from `cwd`, on this machine's CPU."""
    env = {**os.environ, "PYTHON": python, "JAX_PLATFORMS": "cpu"}
    env.pop("PYTHONPATH", None)  # The bare interpreter must not find packages through it.
    return subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_without_a_gpu_it_says_so_and_measures_nothing(tmp_path):
    done = run_script(tmp_path / "out", sys.executable)
    assert done.returncode == 3, done.stderr
    assert "JAX's backend is 'cpu', not gpu: nothing to measure." in done.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_logs_go_where_the_caller_means_from_any_directory(tmp_path):
    done = run_script("relative-out", sys.executable, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert (tmp_path / "relative-out").is_dir()
    assert not (SCRIPT.parent.parent / "relative-out").exists()


def test_a_python_without_the_packages_is_refused_naming_them(tmp_path):
    bare = tmp_path / "bare-python"  # This interpreter without its site-packages.
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    done = run_script(tmp_path / "out", str(bare))
    assert done.returncode == 2, done.stderr
    assert "missing Python packages: jax flax optax" in done.stderr
    assert "ml_collections" in done.stderr
