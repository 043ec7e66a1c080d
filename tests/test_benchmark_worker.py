"""benchmarks/compare/: a compared library's step runs in a worker process of its own, on
command, and its failures reach the benchmark by name; the PyTorch step is our model (torch
tests skip where PyTorch is not installed)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.compare.worker import StepWorker
from benchmarks.machine import process_cpu_seconds
from benchmarks.train_step import benchmark
from benchmarks.workloads import random_batch, workload_config
from tests.test_train_step_benchmark import BENCH_ARGS, FLAX_WMT, needs_example, small_workload
from transformer.model import build_model, count_parameters

STEPS = "tests.worker_steps"  # Builders for the worker itself; no JAX there.


# --------------------------------------------------------------------------- worker
def test_a_worker_steps_in_its_own_process_and_counts_its_own_cpu_time():
    worker = StepWorker("spinner", f"{STEPS}:spinning_step", 0.3)
    assert worker.info["pid"] != os.getpid()
    assert worker.info["description"] == "a spinning step"
    before, ours_before = worker.cpu_seconds, process_cpu_seconds()
    worker.run()
    assert worker.cpu_seconds - before >= 0.29  # CPU time it spun, wherever the machine is.
    assert process_cpu_seconds() - ours_before < 0.15  # Waiting on the pipe costs ~nothing.
    kind, size = worker.close()
    assert kind == "process peak RSS"
    assert size > 1 << 20


def test_submitted_workers_step_at_the_same_time_and_return_their_results(tmp_path):
    doubling = StepWorker("doubler", f"{STEPS}:doubling_step")
    try:
        assert doubling.run(4) == (8, doubling.info["pid"])
    finally:
        doubling.close()
    # Each waits for the other's file: both return True only if they stepped at once.
    names = [("a", "b"), ("b", "a")]
    workers = [StepWorker(me, f"{STEPS}:meeting_step", str(tmp_path), me, o) for me, o in names]
    try:
        for worker in workers:
            worker.submit()
        assert [worker.result() for worker in workers] == [True, True]
    finally:
        for worker in workers:
            worker.close()


@pytest.mark.parametrize("use_jax", [False, True])
def test_reading_a_workers_peak_memory_starts_no_jax_backend_it_did_not_use(use_jax):
    # On a GPU host, starting one would claim GPU memory in a PyTorch worker.
    worker = StepWorker("jax", f"{STEPS}:jax_step", use_jax)
    try:
        worker.run()
        assert worker.call("benchmarks.machine:jax_started") is use_jax
        worker.call("benchmarks.machine:peak_memory")
        assert worker.call("benchmarks.machine:jax_started") is use_jax
    finally:
        worker.close()


def test_a_worker_does_not_import_the_script_that_started_it(tmp_path):
    # Spawn would re-run train_step.py's imports (JAX, Flax) in a PyTorch worker.
    script = tmp_path / "script.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "import jax  # As benchmarks/train_step.py does.\n"
        "from benchmarks.compare.worker import StepWorker\n"
        "if __name__ == '__main__':\n"
        "    worker = StepWorker('plain', 'tests.worker_steps:spinning_step', 0.0)\n"
        "    print('jax in the worker:', worker.call('tests.worker_steps:jax_imported'))\n"
        "    print('main script:', sys.modules['__main__'].__file__)\n"
        "    worker.close()\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "jax in the worker: False" in done.stdout
    assert f"main script: {script}" in done.stdout  # Left as it was.


def test_a_stopped_worker_says_so_and_closes_quietly():
    worker = StepWorker("broken", f"{STEPS}:failing_step")
    with pytest.raises(SystemExit, match="The broken worker: ValueError"):
        worker.run()
    assert worker.close() is None  # As in a `finally` after the error.
    with pytest.raises(SystemExit, match=re.escape("The broken worker has already stopped.")):
        worker.run()


def test_a_calls_cpu_time_is_not_counted_as_the_next_steps():
    worker = StepWorker("spinner", f"{STEPS}:spinning_step", 0.0)
    try:
        worker.call("tests.worker_steps:spin_half_a_second")
        before = worker.cpu_seconds
        worker.run()
        assert worker.cpu_seconds - before < 0.2  # Not the call's 0.5 CPU seconds.
    finally:
        worker.close()


def test_a_builders_refusal_reaches_the_benchmark_naming_the_worker(tmp_path):
    (tmp_path / "models.py").write_text("")
    config = small_workload()
    builder = "benchmarks.compare.flax_wmt:build_flax_wmt_step"
    refusal = f"The flax worker: --flax_wmt {tmp_path}: no train.py"
    with pytest.raises(SystemExit, match=re.escape(refusal)):
        StepWorker("flax", builder, config, random_batch(config), tmp_path)


def test_a_worker_that_dies_mid_step_is_named_with_its_exit_code():
    worker = StepWorker("vanishing", f"{STEPS}:exiting_step", 3)
    with pytest.raises(SystemExit, match=re.escape("The vanishing worker process died (exit")):
        worker.run()


def test_an_error_in_a_workers_step_is_reported_with_its_message():
    worker = StepWorker("broken", f"{STEPS}:failing_step")
    with pytest.raises(
        SystemExit, match="The broken worker: ValueError: the batch does not fit this model"
    ):
        worker.run()


# ------------------------------------------------------------- compared libraries
@pytest.mark.slow  # A whole comparison run (30 s); the flax step's build is checked by default.
@needs_example
def test_flax_wmt_is_compared_from_a_process_of_its_own(capsys):
    args = dict(vars(BENCH_ARGS), compare=["flax"], flax_wmt=FLAX_WMT)
    result = benchmark(small_workload(), "small", type(BENCH_ARGS)(**args))
    out = capsys.readouterr().out
    pid = int(re.search(r"flax/examples/wmt \(from .*\), process (\d+):", out).group(1))
    assert pid != os.getpid()
    assert re.search(r"^  flax +\d+\.\d+ s/step", out, re.M), out
    assert re.search(r"ours / flax tokens/s: \d+\.\d\dx", out), out
    assert re.search(r"^  flax: \d+\.\d\d GiB \(process peak RSS, in its own process\)", out, re.M)
    assert result["tokens_per_second"] > 0


@pytest.mark.slow  # A whole comparison run (40 s); the torch step's build is checked below.
def test_pytorch_is_compared_from_a_process_of_its_own_with_our_parameter_count(capsys):
    pytest.importorskip("torch")
    args = dict(vars(BENCH_ARGS), compare=["torch"])
    benchmark(small_workload(), "small", type(BENCH_ARGS)(**args))
    out = capsys.readouterr().out
    found = re.search(r"PyTorch \S+ eager, \d+ threads, process (\d+): ([\d,]+) parameters\n", out)
    assert found, out  # No "NOT equal" after the count.
    assert int(found.group(1)) != os.getpid()
    assert re.search(r"ours / torch tokens/s: \d+\.\d\dx", out), out
    assert "PyTorch's float32 4096^3 matmul:" in out
    assert re.search(r"^  torch: \d+\.\d\d GiB \(process peak RSS, in its own process\)", out, re.M)


def test_torch_reference_has_our_parameter_count():
    pytest.importorskip("torch")
    from benchmarks.compare.torch_step import build_torch_step

    config = workload_config("ref-small", rows=2, length=8)
    run, info = build_torch_step(config, random_batch(config))
    run()  # One step runs.
    model = build_model(config.model)
    tokens = jnp.ones((1, 8), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens))["params"]
    assert info["parameters"] == count_parameters(params) == 7_617_536


def test_torch_matmul_peak_is_measured_as_flops_per_second():
    pytest.importorskip("torch")
    from benchmarks.compare.torch_step import measured_torch_peak_flops

    peak = measured_torch_peak_flops(n=256, repeats=3)
    assert 0 < peak < float("inf")  # 2 n^3 FLOPs over the fastest call's positive time.


def test_matmul_comparison_times_the_same_products_in_both_libraries():
    pytest.importorskip("torch")
    from benchmarks.compare.matmul import products

    pairs = products(rows=48, d_in=16, d_out=24)
    assert set(pairs) == {"forward x @ w", "input grad dy @ w^T", "weight grad x^T @ dy"}
    shapes = {"forward x @ w": (48, 24), "input grad dy @ w^T": (48, 16)}
    for name, (ours, theirs) in pairs.items():
        expected = np.asarray(theirs().numpy())
        assert expected.shape == shapes.get(name, (16, 24))
        np.testing.assert_allclose(np.asarray(ours()), expected, rtol=1e-4, atol=1e-4)
