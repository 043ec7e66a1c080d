"""benchmarks/gpu.sh (the GPU figures of docs/performance.md in one call) refuses, with a
reason, a machine it cannot measure, before it spends any GPU time; `--check` builds
every run's configs on any machine."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.sh"


def run_script(
    out: Path | str, python: str, cwd: Path | None = None, *flags: str
) -> subprocess.CompletedProcess:
    """gpu.sh run with `flags` and OUT_DIR `out`, from `cwd`, on this machine's CPU."""
    env = {**os.environ, "PYTHON": python, "JAX_PLATFORMS": "cpu"}
    env.pop("PYTHONPATH", None)  # The bare interpreter must not find packages through it.
    return subprocess.run(
        ["bash", str(SCRIPT), *flags, str(out)],
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


@pytest.mark.slow
def test_check_builds_every_runs_configs_on_a_machine_without_a_gpu(tmp_path):
    done = run_script(tmp_path / "out", sys.executable, None, "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    for run in ("big", "base", "base_max_batch"):
        assert f"=== {run}: exit 0" in done.stdout
        log = (tmp_path / "out" / f"{run}.txt").read_text()
        assert "attention=dot_product_attention" in log and "dtype=bfloat16" in log
        assert "TFLOP per step" in log
    assert "configs/big.py: encoder_decoder, 6 + 6 layers, d_model 1024" in done.stdout
    assert "configs/base.py --variant dropout_rng=rbg:" in done.stdout
    assert "gpu_tests: not with --check" in done.stdout
