"""benchmarks/train_step.py --compare flax runs flax/examples/wmt's own step on our workload.

The example comes from a Flax source tree (`FLAX_WMT=.../examples/wmt`; .ci/run unpacks the
installed version's source distribution); without one, only the error paths are tested."""

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.flax_wmt import build_flax_wmt_step, load_example
from benchmarks.train_step import (
    MAX_BATCH_LIMIT,
    benchmark,
    describe_rows,
    fits,
    largest_batch,
    next_rows,
    random_batch,
    time_alternating,
    workload_config,
)

FLAX_WMT = os.environ.get("FLAX_WMT")
needs_example = pytest.mark.skipif(
    not (FLAX_WMT and (Path(FLAX_WMT) / "train.py").is_file()),
    reason="FLAX_WMT does not name a flax/examples/wmt folder",
)


def test_a_folder_without_the_example_is_refused_naming_it(tmp_path):
    (tmp_path / "models.py").write_text("")
    with pytest.raises(SystemExit, match=re.escape(f"{tmp_path}: no train.py")):
        load_example(tmp_path)


def test_a_train_py_without_the_step_is_refused_naming_what_is_missing(tmp_path):
    (tmp_path / "models.py").write_text("")
    (tmp_path / "train.py").write_text("import jax\n\ndef train_step():\n    pass\n")
    with pytest.raises(SystemExit, match="defines no TrainState"):
        load_example(tmp_path)


@needs_example
def test_flax_wmt_step_runs_our_workload_with_our_parameters_plus_its_final_norms():
    config = workload_config("ref-small", rows=2, length=8)
    run, info = build_flax_wmt_step(config, random_batch(config), FLAX_WMT)
    run()
    run()  # The donated state comes back and steps again.
    # Ours has 7,617,536 (test_switches); pre-LN adds a LayerNorm (scale and bias) after each
    # of its two stacks.
    assert info["parameters"] == 7_617_536 + 2 * 2 * config.model.d_model
    assert info["description"] == f"flax/examples/wmt (from {FLAX_WMT})"


@needs_example
def test_flax_wmt_comparison_refuses_models_it_cannot_express():
    config = workload_config("ref-small", rows=2, length=8)
    untied = dataclasses.replace(
        config, model=dataclasses.replace(config.model, tie_output_embedding=False)
    )
    with pytest.raises(SystemExit, match="tied shared embeddings"):
        build_flax_wmt_step(untied, random_batch(untied), FLAX_WMT)


def small_workload(*overrides):
    layers = ["model.num_encoder_layers=1", "model.num_decoder_layers=1"]
    return workload_config("ref-small", [*layers, *overrides], rows=2, length=8)


BENCH_ARGS = argparse.Namespace(
    steps=5, warmup=0, lead_in=1, compare=None, peak_flops=1e12, flax_wmt=None
)


def test_a_variant_is_timed_in_turn_with_our_step_and_named_by_its_overrides(capsys):
    variant = small_workload("model.remat=block")
    result = benchmark(small_workload(), "small", BENCH_ARGS, {"model.remat=block": variant})
    out = capsys.readouterr().out
    assert "Variant model.remat=block: compiled in" in out
    assert re.search(r"^  model\.remat=block +\d+\.\d+ s/step", out, re.M), out
    assert re.search(r"model\.remat=block / ours tokens/s: \d+\.\d\dx", out), out
    assert result["variant_tokens_per_second"]["model.remat=block"] > 0


def test_set_values_are_spelled_as_the_config_spells_them():
    config = workload_config("ref-small", ["model.remat=none", "model.d_k=None", "seed=3"])
    assert (config.model.remat, config.model.d_k, config.seed) == ("none", None, 3)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("model.remat=sometimes", "config.model.remat='sometimes' must be one of"),
        ("model.layers=2", "unknown config key 'model.layers'"),
    ],
)
def test_a_bad_set_is_refused_naming_it(setting, message):
    done = subprocess.run(
        [sys.executable, "benchmarks/train_step.py", "--set", setting],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_on_an_accelerator_a_given_peak_is_checked_against_a_measured_matmul(monkeypatch, capsys):
    """The GPU branch, taken on CPU: with a datasheet peak given, the matmul ceiling is
    still measured (before the step is built) and MFU printed against both."""
    import jax

    from benchmarks import train_step

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(train_step, "ACCELERATOR_MATMUL", 256)  # A GPU's 8192 is slow here.
    result = benchmark(small_workload(), "small", BENCH_ARGS)
    out = capsys.readouterr().out
    ceiling = result["measured_matmul_flops"]
    assert ceiling > 0 and result["peak_flops"] == BENCH_ARGS.peak_flops
    assert "Peak: 1,000.0 GFLOP/s (given)" in out
    assert (
        f"Measured ceiling: {ceiling / 1e9:,.1f} GFLOP/s (the fastest float32 256^3 matmul)" in out
    )
    assert re.search(r"^  ours .* MFU +\d+\.\d% \(\d+\.\d% of the ceiling\)", out, re.M), out


def test_on_cpu_a_given_peak_is_not_measured(capsys):
    result = benchmark(small_workload(), "small", BENCH_ARGS)
    assert result["measured_matmul_flops"] is None
    assert "ceiling" not in capsys.readouterr().out


def test_a_variant_that_changes_the_batch_is_refused():
    bigger = workload_config("ref-small", rows=4, length=8)
    with pytest.raises(SystemExit, match="--variant batch_size=4: changes the batch"):
        benchmark(small_workload(), "small", BENCH_ARGS, {"batch_size=4": bigger})


def test_runs_take_turns_and_each_round_starts_one_run_further_on():
    order = []
    runs = {name: (lambda name=name: order.append(name)) for name in ("ours", "flax", "torch")}
    wall, cpu = time_alternating(runs, steps=4, warmup=1)
    assert order[:3] == ["ours", "flax", "torch"]  # Warm-up.
    assert order[3:] == [
        *("ours", "flax", "torch"),
        *("flax", "torch", "ours"),
        *("torch", "ours", "flax"),
        *("ours", "flax", "torch"),
    ]
    assert {name: len(times) for name, times in wall.items()} == dict.fromkeys(runs, 4)
    assert all(t >= 0 for times in (*wall.values(), *cpu.values()) for t in times)


def test_each_timed_step_follows_lead_in_steps_of_its_own_run_untimed():
    order = []

    def make(name):
        def run():
            order.append(name)
            time.sleep(0.02 if len(order) % 2 else 0.0)  # Lead-in steps (odd calls) are slow.

        return run

    runs = {name: make(name) for name in ("ours", "torch")}
    wall, _ = time_alternating(runs, steps=2, warmup=0, lead_in=1)
    assert order == ["ours", "ours", "torch", "torch", "torch", "torch", "ours", "ours"]
    timed = [t for times in wall.values() for t in times]
    assert max(timed) < 0.015  # Only the fast, second step of each turn was timed.


@pytest.mark.slow  # About ten compiles (70 s); next_rows' own test below is instant.
def test_the_largest_batch_is_the_last_multiple_of_8_whose_step_fits_the_cap(capsys):
    config = small_workload()
    _, _, cap = fits(config, 100, 1 << 40)  # XLA's account of a 100-row step.
    assert largest_batch(config, cap, cap) == 96
    tries = re.findall(r"^ +(\d+) rows: (fits|does not fit)", capsys.readouterr().out, re.M)
    assert ("96", "fits") in tries
    assert ("104", "does not fit") in tries
    assert len(tries) <= 10


def test_a_batch_at_the_searchs_limit_is_not_called_the_largest():
    assert describe_rows(96, 64) == "    96 rows = 6,144 tokens"
    at_limit = describe_rows(MAX_BATCH_LIMIT, 64)
    assert at_limit.endswith("(the search's limit: larger batches were not tried)")


def test_no_batch_fits_when_8_rows_do_not():
    assert largest_batch(small_workload(), cap_bytes=1024, budget=1024) == 0


def test_the_next_batch_is_where_the_accounts_line_meets_the_budget_inside_the_bracket():
    # 1 MB + 10 kB a row; the budget is reached at 300 rows.
    accounts = {8: 1_080_000, 16: 1_160_000}
    assert next_rows(accounts, 4_000_000, good=16, bad=16392, bisect=False) == 296
    # Between a fitting and a failing batch, the line through their two accounts.
    accounts.update({200: 3_000_000, 1000: 11_000_000})
    assert next_rows(accounts, 4_000_000, good=200, bad=1000, bisect=False) == 296
    # ... but an eighth of the bracket inside it at least.
    assert next_rows(accounts, 3_100_000, good=200, bad=1000, bisect=False) == 296
    assert next_rows(accounts, 4_000_000, good=16, bad=400, bisect=True) == 208
    assert next_rows({8: None}, 4_000_000, good=8, bad=72, bisect=False) == 40  # No accounts.
    # A line past the bracket is held inside it.
    assert next_rows(accounts, 10**9, good=16, bad=104, bisect=False) == 96
