"""benchmarks/worker.py: a compared library's train step runs in a process of its own, on
command, and its failures reach the benchmark by name."""

import os
import re
import subprocess
import sys
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

STEPS = "tests.worker_steps"  # Builders for the worker itself; no JAX there.


def test_a_worker_steps_in_its_own_process_and_counts_its_own_cpu_time():
    worker = StepWorker("spinner", f"{STEPS}:spinning_step", 0.3)
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
    workers = [StepWorker(f"napper {i}", f"{STEPS}:napping_step", 0.5) for i in range(2)]
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
    worker = StepWorker("jax", f"{STEPS}:jax_step", use_jax)
    try:
        worker.run()
        assert worker.call("benchmarks.worker:_jax_started") is use_jax
        worker.call("benchmarks.worker:peak_memory")
        assert worker.call("benchmarks.worker:_jax_started") is use_jax
    finally:
        worker.close()


def test_a_worker_does_not_import_the_script_that_started_it(tmp_path):
    # Spawn would re-run train_step.py's imports (JAX, Flax) in a PyTorch worker.
    script = tmp_path / "script.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "import jax  # As benchmarks/train_step.py does.\n"
        "from benchmarks.worker import StepWorker\n"
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
        assert worker.cpu_seconds - before < 0.2
    finally:
        worker.close()


def test_a_builders_refusal_reaches_the_benchmark_naming_the_worker(tmp_path):
    (tmp_path / "models.py").write_text("")
    config = small_workload()
    builder = "benchmarks.flax_wmt:build_flax_wmt_step"
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
