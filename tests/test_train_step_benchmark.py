"""benchmarks/train_step.py: the workloads' FLOPs, variants (config keys and CPU forms turned
off) timed in turns with our step, and the --max_batch search; and flax/examples/wmt's step
for --compare flax.

The example comes from a Flax source tree (`FLAX_WMT=.../examples/wmt`; .ci/run unpacks the
installed version's source distribution); without one, only the error paths are tested."""

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from benchmarks.compare.flax_wmt import build_flax_wmt_step, load_example
from benchmarks.max_batch import MAX_BATCH_LIMIT, describe_rows, fits, largest_batch, next_rows
from benchmarks.steps import time_alternating, turn_order
from benchmarks.train_step import benchmark, main, parse_args, parse_variant, plain_form_specs
from benchmarks.workloads import file_config, model_flops, random_batch, workload_config
from transformer import cpu
from transformer.config import ConfigError
from transformer.model import build_model

ROOT = Path(__file__).resolve().parent.parent
FLAX_WMT = os.environ.get("FLAX_WMT")
needs_example = pytest.mark.skipif(
    not (FLAX_WMT and (Path(FLAX_WMT) / "train.py").is_file()),
    reason="FLAX_WMT does not name a flax/examples/wmt folder",
)
BENCH_ARGS = argparse.Namespace(
    steps=5, warmup=0, lead_in=1, compare=None, peak_flops=1e12, flax_wmt=None
)


def small_workload(*overrides):
    layers = ["model.num_encoder_layers=1", "model.num_decoder_layers=1"]
    return workload_config("ref-small", [*layers, *overrides], rows=2, length=8)


def ref_small_parameters():
    config = workload_config("ref-small")
    model = build_model(config.model)
    tokens = jnp.ones((1, 8), jnp.int32)
    return config, jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens))["params"]


# ------------------------------------------------------------------------ workloads
def test_ref_small_model_flops_are_the_issues_194_gflop_per_step():
    config, params = ref_small_parameters()
    flops = model_flops(config, params, 64, 64)
    assert flops["total"] / 1e9 == pytest.approx(194.5, abs=0.1)
    assert flops["non_embedding_params"] == 5_520_384


def test_overrides_are_spelled_as_the_config_spells_them():
    config = workload_config("ref-small", ["model.remat=none", "model.d_k=None", "seed=3"])
    assert (config.model.remat, config.model.d_k, config.seed) == ("none", None, 3)
    assert config.model.max_len == 64 + 50  # Derived from data.max_length.


@pytest.mark.parametrize(
    "argument, message",
    [
        pytest.param(
            "--config.model.remat=sometimes",
            "config.model.remat='sometimes' must be one of",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            "--config.model.layers=2", "unknown config key 'model.layers'", marks=pytest.mark.slow
        ),
        ("--variant=plain=fast_softmax", "plain=fast_softmax is none of all, flat_matmul"),
    ],
)
def test_a_bad_override_or_variant_is_refused_naming_it(argument, message):
    done = subprocess.run(
        [sys.executable, "benchmarks/train_step.py", argument],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------------- variants
def test_a_variant_takes_config_overrides_and_cpu_forms_to_turn_off():
    made = []

    def make_config(overrides):
        made.append(overrides)
        return small_workload(*overrides)

    variant = parse_variant("model.remat=block,plain=flat_matmul", make_config)
    assert made == [["model.remat=block"]]
    assert (variant.config.model.remat, variant.plain) == ("block", ("flat_matmul",))
    assert parse_variant("plain=all,plain=flat_matmul", make_config).plain == cpu.FORMS


TRAIN_STEP_FORMS = ("flat_matmul", "threefry_bits", "recomputed_after_cotangent")


def test_plain_forms_adds_a_variant_per_cpu_form_that_applies_and_one_with_all_off():
    args = parse_args(["--workload", "ref-small", "--plain_forms", "--config.seed=1"])
    assert args.plain_forms and args.overrides == ["seed=1"]
    assert plain_form_specs(small_workload()) == [
        "plain=flat_matmul",
        "plain=threefry_bits",
        "plain=all",
    ]  # Without remat, recomputed_after_cotangent changes nothing; decoding's forms never.
    remat = plain_form_specs(small_workload("model.remat=block"))
    assert remat == [*(f"plain={form}" for form in TRAIN_STEP_FORMS), "plain=all"]


def test_check_lists_every_variant_with_the_forms_it_turns_off(capsys):
    main(["--workload", "ref-small", "--config.model.remat=block", "--plain_forms", "--check"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "ref-small",
        *(f"ref-small --variant plain={form}" for form in TRAIN_STEP_FORMS),
        "ref-small --variant plain=all",
    ]
    assert all("remat=block" in line for line in lines)
    assert lines[-1].endswith(f"CPU forms off: {', '.join(cpu.FORMS)}; 0.19 TFLOP per step")


@pytest.mark.slow
def test_a_plain_variant_is_traced_with_its_form_off_and_its_memory_printed(capsys):
    """remat=block's step without recomputed_after_cotangent holds every layer's activations
    at once (tests/test_cpu.py): XLA's account of the variant shows the form was off."""
    sizes = ["model.d_model=32", "model.d_ff=128", "model.num_heads=2", "model.remat=block"]
    layers = ["model.num_encoder_layers=1", "model.num_decoder_layers=1"]
    config = workload_config("ref-small", [*sizes, *layers], rows=16, length=32)
    config = config.with_vocab_size(64)  # Else the logits outweigh the activations.
    name = "plain=recomputed_after_cotangent"
    variant = parse_variant(name, lambda _: config)
    result = benchmark(config, "small", BENCH_ARGS, [variant])
    out = capsys.readouterr().out
    assert f"{name}: " in out and "CPU forms off: recomputed_after_cotangent" in out
    assert re.search(rf"^  {name} +\d+\.\d+ s/step", out, re.M), out
    assert re.search(rf"^  ours / {name} tokens/s: \d+\.\d\dx$", out, re.M), out
    for run in ("ours", name):
        assert re.search(rf"^  {run} +\d+\.\d\d GiB  \(temporaries \d+\.\d\d GiB\)$", out, re.M)
    accounts = result["xla_step_bytes"]
    assert accounts[name] > 1.3 * accounts["ours"], accounts
    assert set(result["variant_tokens_per_second"]) == {name}


def test_a_variant_that_changes_the_batch_is_refused():
    variant = parse_variant(
        "batch_size=4", lambda _: workload_config("ref-small", rows=4, length=8)
    )
    with pytest.raises(SystemExit, match="--variant batch_size=4: changes the batch"):
        benchmark(small_workload(), "small", BENCH_ARGS, [variant])


# --------------------------------------------------------------------------- peaks
@pytest.mark.slow
def test_on_an_accelerator_a_given_peak_is_checked_against_a_measured_matmul(monkeypatch, capsys):
    """The GPU branch, taken on CPU: with a datasheet peak given, the matmul ceiling is
    still measured (before the step is built) and MFU printed against both."""
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


@pytest.mark.slow
def test_on_cpu_a_given_peak_is_not_measured(capsys):
    result = benchmark(small_workload(), "small", BENCH_ARGS)
    assert result["measured_matmul_flops"] is None
    assert "ceiling" not in capsys.readouterr().out


# -------------------------------------------------------------------------- timing
def test_runs_take_turns_and_each_round_starts_one_run_further_on():
    order = []
    runs = {name: (lambda name=name: order.append(name)) for name in ("ours", "flax", "torch")}
    wall, cpu_time = time_alternating(runs, steps=4, warmup=1)
    assert order[:3] == ["ours", "flax", "torch"]  # Warm-up.
    assert (
        order[3:]
        == turn_order(runs, 4)
        == [
            *("ours", "flax", "torch"),
            *("flax", "torch", "ours"),
            *("torch", "ours", "flax"),
            *("ours", "flax", "torch"),
        ]
    )
    assert {name: len(times) for name, times in wall.items()} == dict.fromkeys(runs, 4)
    assert {name: len(times) for name, times in cpu_time.items()} == dict.fromkeys(runs, 4)


def test_each_timed_step_follows_lead_in_steps_of_its_own_run_untimed():
    order, now = [], [0.0]

    def make(name):
        def run():
            order.append(name)
            now[0] += 100.0 if len(order) % 2 else 1.0  # Lead-in steps (odd calls) are long.

        return run

    runs = {name: make(name) for name in ("ours", "torch")}
    wall, _ = time_alternating(runs, steps=2, warmup=0, lead_in=1, clock=lambda: now[0])
    assert order == ["ours", "ours", "torch", "torch", "torch", "torch", "ours", "ours"]
    assert wall == {"ours": [1.0, 1.0], "torch": [1.0, 1.0]}  # Only each turn's second step.


def test_a_runs_cpu_time_is_read_from_its_own_clock():
    worker_clock = iter([10.0, 10.5, 10.5, 11.25])  # Start and end of its two steps.
    runs = {"ours": lambda: None, "theirs": lambda: None}
    _, cpu_time = time_alternating(
        runs, steps=2, warmup=0, cpu_clocks={"theirs": worker_clock.__next__}
    )
    assert cpu_time["theirs"] == [0.5, 0.75]
    assert len(cpu_time["ours"]) == 2


# ----------------------------------------------------------------------- max batch
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


@pytest.mark.slow
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


# ------------------------------------------------------------- flax/examples/wmt
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
    # Ours has 7,617,536 (test_benchmark_worker); pre-LN adds a LayerNorm (scale and bias)
    # after each of its two stacks.
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


def test_compare_flax_without_the_example_folder_is_refused():
    with pytest.raises(SystemExit):
        parse_args(["--compare", "flax"])


def test_config_files_load_with_their_argument_and_overrides():
    config = file_config(str(ROOT / "configs" / "ablations.py:C_n2"), ["model.remat=block"])
    assert (config.model.num_encoder_layers, config.model.remat) == (2, "block")
    assert config.mesh.data == 1 and config.model.vocab_size == config.data.vocab_size
    with pytest.raises(ConfigError, match="does not exist"):
        file_config(str(ROOT / "configs" / "nonesuch.py"))
