"""benchmarks/worker.py: a compared library's train step runs in a process of its own, on
command, and its failures reach the benchmark by name."""

import os
import re
import time
from pathlib import Path

import pytest

from benchmarks.train_step import (
    benchmark,
    process_cpu_seconds,
    random_batch,
    time_alternating,
)
from benchmarks.worker import StepWorker
from tests.test_train_step_benchmark import BENCH_ARGS, FLAX_WMT, needs_example, small_workload

HERE = "tests.test_benchmark_worker"


# Builders for the worker itself (a real library's step is in the tests further down).
def spinning_step(seconds: float):
    """A step that spends `seconds` of CPU time."""

    def run() -> None:
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass

    return run, {"parameters": 0, "description": "a spinning step"}


def exiting_step(code: int):
    """A step whose process exits with `code` (as one killed for memory would vanish)."""
    return (lambda: os._exit(code)), {"parameters": 0, "description": "an exiting step"}


def napping_step(seconds: float):
    """A step that sleeps `seconds` and returns its argument doubled with its pid."""

    def run(x: int) -> tuple[int, int]:
        time.sleep(seconds)
        return 2 * x, os.getpid()

    return run, {"parameters": 0, "description": "a napping step"}


def jax_step(use_jax: bool):
    """A step in a process that imports JAX, and runs on it only if `use_jax`."""
    import jax.numpy as jnp

    def run() -> None:
        if use_jax:
            jnp.ones(4).block_until_ready()

    return run, {"parameters": 0, "description": "a JAX step"}


def failing_step():
    def run() -> None:
        raise ValueError("the batch does not fit this model")

    return run, {"parameters": 0, "description": "a failing step"}


def test_a_worker_steps_in_its_own_process_and_counts_its_own_cpu_time():
    worker = StepWorker("spinner", f"{HERE}:spinning_step", 0.3)
    assert worker.info["pid"] != os.getpid()
    assert worker.info["description"] == "a spinning step"
    before, ours_before = worker.cpu_seconds, process_cpu_seconds()
    worker.run()
    assert worker.cpu_seconds - before >= 0.29
    assert process_cpu_seconds() - ours_before < 0.15  # Waiting on the pipe costs ~nothing.
    kind, size = worker.close()
    assert kind == "process peak RSS"
    assert size > 1 << 20


def test_submitted_workers_step_at_the_same_time_and_return_their_results():
    workers = [StepWorker(f"napper {i}", f"{HERE}:napping_step", 0.5) for i in range(2)]
    try:
        assert workers[0].run(4) == (8, workers[0].info["pid"])
        start = time.perf_counter()
        for i, worker in enumerate(workers):
            worker.submit(i + 1)
        results = [worker.result() for worker in workers]
        assert time.perf_counter() - start < 0.9  # Both naps at once, not one after the other.
        assert results == [(2, workers[0].info["pid"]), (4, workers[1].info["pid"])]
    finally:
        for worker in workers:
            worker.close()


@pytest.mark.parametrize("use_jax", [False, True])
def test_reading_a_workers_peak_memory_starts_no_jax_backend_it_did_not_use(use_jax):
    # On a GPU host, starting one would claim GPU memory in a PyTorch worker.
    worker = StepWorker("jax", f"{HERE}:jax_step", use_jax)
    worker.run()
    assert worker.call("benchmarks.worker:_jax_started") is use_jax
    assert worker.call("benchmarks.worker:peak_memory")[0] == "process peak RSS"  # CPU here.
    assert worker.call("benchmarks.worker:_jax_started") is use_jax
    worker.close()


def test_a_builders_refusal_reaches_the_benchmark_naming_the_worker(tmp_path):
    (tmp_path / "models.py").write_text("")
    config = small_workload()
    builder = "benchmarks.flax_wmt:build_flax_wmt_step"
    refusal = f"The flax worker: --flax_wmt {tmp_path}: no train.py"
    with pytest.raises(SystemExit, match=re.escape(refusal)):
        StepWorker("flax", builder, config, random_batch(config), tmp_path)


def test_a_worker_that_dies_mid_step_is_named_with_its_exit_code():
    worker = StepWorker("vanishing", f"{HERE}:exiting_step", 3)
    with pytest.raises(SystemExit, match=re.escape("The vanishing worker process died (exit")):
        worker.run()


def test_an_error_in_a_workers_step_is_reported_with_its_message():
    worker = StepWorker("broken", f"{HERE}:failing_step")
    with pytest.raises(
        SystemExit, match="The broken worker: ValueError: the batch does not fit this model"
    ):
        worker.run()


def test_a_runs_cpu_time_is_read_from_its_own_clock():
    worker_clock = iter([10.0, 10.5, 10.5, 11.25])  # Start and end of its two steps.
    runs = {"ours": lambda: None, "theirs": lambda: None}
    _, cpu = time_alternating(runs, steps=2, warmup=0, cpu_clocks={"theirs": worker_clock.__next__})
    assert cpu["theirs"] == [0.5, 0.75]
    assert all(0 <= t < 0.1 for t in cpu["ours"])


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
    assert Path(FLAX_WMT).is_dir()


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
