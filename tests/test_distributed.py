"""train.py's multi-host launch flags: a set of processes that cannot exist is refused with
one `error:` line, before anything is written (a real train.py in a subprocess)."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

# What JAX's cluster auto-detection reads: with none of it, "auto" has no cluster to find.
CLUSTER_VARIABLES = ("SLURM_", "OMPI_", "KUBERNETES_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR")


def train(workdir, *flags):
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "XLA_FLAGS" and not k.startswith(CLUSTER_VARIABLES)
    }
    return subprocess.run(
        [sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", str(workdir),
         *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--coordinator_address=127.0.0.1:12345", "--num_processes=2", "--process_id=2"],
            "--process_id=2 must be in [0, --num_processes=2).",
        ),
        (
            ["--num_processes=2"],
            "--num_processes=2 needs --coordinator_address (host:port of process 0, or 'auto' "
            "to detect the cluster).",
        ),
        pytest.param(
            ["--coordinator_address=127.0.0.1:12345", "--num_processes=2", "--process_id=-1"],
            "--process_id=-1 must be in [0, --num_processes=2).",
            marks=pytest.mark.slow,  # Each case is a process; the slow run checks them all.
        ),
        pytest.param(
            ["--coordinator_address=127.0.0.1:12345", "--num_processes=0"],
            "--num_processes=0 must be at least 1.",
            marks=pytest.mark.slow,
        ),
        (
            ["--coordinator_address=127.0.0.1", "--num_processes=2", "--process_id=1"],
            "--coordinator_address=127.0.0.1 must be host:port of process 0 (or 'auto' to "
            "detect the cluster).",
        ),
    ],
)
def test_impossible_process_sets_are_one_error_line_and_write_nothing(tmp_path, flags, message):
    workdir = tmp_path / "run"
    out = train(workdir, *flags)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert "Traceback" not in out.stderr
    assert not workdir.exists()


@pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is not None, reason="mpi4py makes JAX detect MPI"
)
def test_auto_coordinator_without_a_cluster_is_an_error_line_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    out = train(workdir, "--coordinator_address=auto")
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --coordinator_address=auto found no cluster to join"), last
    assert "Traceback" not in out.stderr
    assert not workdir.exists()
