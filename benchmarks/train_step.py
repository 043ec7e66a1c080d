"""Train-step throughput, model FLOPs, MFU and memory; variants of the step timed beside it.

  python benchmarks/train_step.py --workload ref-small [--steps 7]
  python benchmarks/train_step.py --workload ref-base --plain_forms
  python benchmarks/train_step.py --workload ref-base --variant model.remat=block \
      --variant model.remat=block,plain=recomputed_after_cotangent
  python benchmarks/train_step.py --config configs/big.py --config.model.dtype=bfloat16 \
      --peak_flops 989e12
  python benchmarks/train_step.py --workload ref-base --max_batch --memory_cap_gb 8
  python benchmarks/train_step.py --config configs/big.py --check   (nothing compiled: the
                                                                     model, batch and FLOPs)
  python benchmarks/train_step.py --workload ref-small --compare torch flax --flax_wmt DIR

The step: `transformer.trainer.build`'s jitted train step on one device, compiled ahead, on
one fixed batch of random tokens without padding (benchmarks/steps.py). The workload is
`--workload` (benchmarks/workloads.py: ref-small, ref-base) or `--config FILE[:ARG]`;
`--config.KEY=VALUE` overrides any key of either (values as Python literals).

`--variant SPEC` adds a step timed in turns with ours: SPEC is comma-separated KEY=VALUE
overrides (on top of the --config ones) and `plain=FORM` items, each turning one of
transformer/cpu.py's CPU forms off while that step is traced (`plain=all`: every one), so it
runs the plain code the form stands in for. `--plain_forms` adds one variant per form and one
with all of them off (recomputed_after_cotangent only where model.remat is set: it changes
nothing else). The forms apply only on the CPU backend. A variant must keep the batch.

Prints the machine, the model, then per step (ours, each variant, each compared library): the
median of `--steps` timed steps, target tokens/s, achieved GFLOP/s, MFU, the min and max, and
the median process CPU time of a step; then ours / each of the others in tokens/s. The steps
take turns, step by step, each timed step right after `--lead_in` untimed ones of its own
(steps.time_alternating says why), so machine noise hits all alike; each timed step ends with
`jax.block_until_ready`. On CPU the malloc changes step times by up to 2x (the first line
names it; README's Training section says how to preload tcmalloc), and a line says how
much CPU time other processes took meanwhile.

MFU = model FLOPs per second (benchmarks/workloads.py) / peak; the peak is `--peak_flops` or,
if not given, measured in the same run: the fastest of 5 jitted 4096 x 4096 matmuls in the
compute dtype, before and after the timed steps. On an accelerator the fastest of 10 of
8192 x 8192, before any step is built, also where --peak_flops gives a datasheet peak, which
is a lead: MFU is then printed against both.

Memory, per step: XLA's account of the compiled step (arguments + outputs + temporaries -
donated), and its temporaries alone; then the process's peak (device `peak_bytes_in_use` on
an accelerator, peak RSS on CPU), all our steps together.

`--compare torch flax` times PyTorch eager and flax/examples/wmt beside ours, each in a
process of its own (benchmarks/compare/ says how). `--max_batch` searches the largest batch
that fits instead (benchmarks/max_batch.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import (
    describe_machine,
    gib,
    load_average,
    other_load,
    peak_memory,
    sample_cpu,
)
from benchmarks.max_batch import max_batch_mode
from benchmarks.steps import Step, build_step, measured_peak_flops, time_alternating, xla_step_bytes
from benchmarks.workloads import (
    WORKLOADS,
    batch_shape,
    describe_batch,
    describe_model,
    describe_switches,
    file_config,
    model_flops,
    random_batch,
    workload_config,
)
from transformer import cpu, sharding, trainer
from transformer.allocator import cpu_allocator_hint
from transformer.config import Config, ConfigError, MeshConfig, split_overrides
from transformer.model import count_parameters

ACCELERATOR_MATMUL = 8192  # The side of the matmul that measures an accelerator's ceiling.


@dataclasses.dataclass(frozen=True)
class Variant:
    """A step timed beside ours: its config and the CPU forms turned off while it traces."""

    name: str  # The --variant SPEC it came from.
    config: Config
    plain: tuple[str, ...] = ()


def parse_variant(spec: str, make_config) -> Variant:
    """A --variant SPEC: comma-separated KEY=VALUE overrides and plain=FORM items."""
    overrides, plain = [], []
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key != "plain":
            overrides.append(item)
        elif value == "all":
            plain += cpu.FORMS
        elif value in cpu.FORMS:
            plain.append(value)
        else:
            forms = ", ".join(("all", *cpu.FORMS))
            raise ConfigError(f"--variant {spec}: plain={value} is none of {forms}.")
    return Variant(spec, make_config(overrides), tuple(dict.fromkeys(plain)))


def plain_form_specs(config: Config) -> list[str]:
    """--plain_forms' variants: each CPU form a train step uses off alone
    (recomputed_after_cotangent only where model.remat is set: it changes nothing else), then
    all of them."""
    forms = [
        f
        for f in cpu.FORMS
        if f not in cpu.DECODING_FORMS
        and (f != "recomputed_after_cotangent" or config.model.remat != "none")
    ]
    return [f"plain={form}" for form in forms] + ["plain=all"]


def refuse_batch_changes(config: Config, variants: list[Variant]) -> None:
    """SystemExit naming a variant whose batch differs from config's: its tokens/s would not
    compare."""
    for variant in variants:
        if batch_shape(variant.config) != batch_shape(config):
            raise SystemExit(
                f"--variant {variant.name}: changes the batch, so tokens/s would not compare."
            )


class Ceiling:
    """The measured matmul ceiling (see the module docstring for when it is measured)."""

    def __init__(self, config: Config, given_peak: float | None):
        self.dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
        on_cpu = jax.default_backend() == "cpu"
        self.n = 4096 if on_cpu else ACCELERATOR_MATMUL  # A bigger product fills a GPU.
        self.around_steps = on_cpu and not given_peak  # Other load only lowers it.
        self.given = given_peak
        # On an accelerator before any step exists: the device's peak-memory count stays ours.
        self.measured = [] if on_cpu else [measured_peak_flops(self.dtype, self.n, repeats=10)]

    def measure_around_steps(self) -> None:
        if self.around_steps:
            self.measured.append(measured_peak_flops(self.dtype, self.n))

    @property
    def best(self) -> float | None:
        return max(self.measured, default=None)

    @property
    def peak(self) -> float:
        return self.given or self.best

    def describe(self) -> str:
        matmul = f"the fastest {jnp.dtype(self.dtype).name} {self.n}^3 matmul"
        lines = [f"Peak: {self.peak / 1e9:,.1f} GFLOP/s ({'given' if self.given else matmul})"]
        if self.given and self.best:
            lines.append(
                f"Measured ceiling: {self.best / 1e9:,.1f} GFLOP/s ({matmul}), "
                f"{self.best / self.given:.0%} of the given peak"
            )
        return "\n".join(lines)


def print_header(config: Config, label: str) -> None:
    m = config.model
    print(describe_machine())
    print(f"Load average at start: {load_average()}")
    print(
        f"{label}: {describe_model(config)}; batch {describe_batch(config)} source and target "
        "tokens; "
        f"dropout {m.dropout_rate} / attention {m.attention_dropout_rate}, label smoothing "
        f"{config.label_smoothing}"
    )
    print(f"Switches: {describe_switches(config)}")


def build_steps(config: Config, variants: list[Variant], batch: dict) -> tuple[dict, dict]:
    """(compiled step, model FLOPs), each by name: "ours", then the variants'."""
    steps, flops = {}, {}
    rows, length = batch_shape(config)
    for variant in [Variant("ours", config), *variants]:
        step = build_step(variant.config, batch, variant.plain)
        forms = f"; CPU forms off: {', '.join(variant.plain)}" if variant.plain else ""
        print(
            f"{variant.name}: {count_parameters(step.params):,} parameters; compiled in "
            f"{step.compile_seconds:.1f} s{forms}"
        )
        steps[variant.name] = step
        flops[variant.name] = model_flops(variant.config, step.params, rows, length)
    return steps, flops


def time_steps(steps: dict[str, Step], args, ceiling: Ceiling, compared=None) -> tuple:
    """(wall, CPU) seconds per timed step of every run, in turns; prints the other load."""
    runs = {name: step.run for name, step in steps.items()}
    runs.update(compared.runs if compared else {})
    ceiling.measure_around_steps()
    if compared:
        compared.measure_matmul()
    start, workers_start = sample_cpu(), compared.cpu_seconds() if compared else 0.0
    clocks = compared.cpu_clocks if compared else None
    wall, cpu_time = time_alternating(runs, args.steps, args.warmup, clocks, args.lead_in)
    end, workers = sample_cpu(), (compared.cpu_seconds() if compared else 0.0) - workers_start
    if compared:
        compared.measure_matmul()
    ceiling.measure_around_steps()
    others, busy = other_load(start, end, os.cpu_count() or 1, workers)
    print(f"Load average at end: {load_average()}")
    print(others)
    if busy:
        print("WARNING: the machine is busy; the figures are slower than idle.")
    return wall, cpu_time


def print_times(wall: dict, cpu_time: dict, flops: dict, tokens: int, ceiling: Ceiling, args):
    """Prints every run's line; returns tokens/s by run."""
    lead = f", each after {args.lead_in} of its own" if args.lead_in else ""
    print(f"\nmedian of {args.steps} steps (taking turns{lead}, after {args.warmup} warm-up):")
    checked = ceiling.best if ceiling.given else None  # A given peak, checked by a measured one.
    width = max(6, *(len(name) for name in wall))
    result = {}
    for name, seconds in wall.items():
        step = statistics.median(seconds)
        achieved = flops.get(name, flops["ours"]) / step  # Compared libraries run our math.
        result[name] = tokens / step
        print(
            f"  {name:{width}s} {step:8.3f} s/step  {tokens / step:10,.0f} target tokens/s  "
            f"{achieved / 1e9:8.1f} GFLOP/s  MFU {100 * achieved / ceiling.peak:5.1f}%"
            + (f" ({100 * achieved / checked:.1f}% of the ceiling)" if checked else "")
            + f"   (min {min(seconds):.3f}, max {max(seconds):.3f}; "
            f"process CPU {statistics.median(cpu_time[name]):.2f} s)"
        )
    for name in flops:
        if name != "ours":
            print(f"  ours / {name} tokens/s: {result['ours'] / result[name]:.2f}x")
    return result


def print_memory(steps: dict[str, Step], compared=None) -> dict[str, int | None]:
    """Prints each step's memory (module docstring); returns XLA's account by step."""
    print("\nMemory, XLA's account of each compiled step (arguments + outputs + temporaries")
    print("- donated), and its temporaries:")
    width = max(len(name) for name in steps)
    accounts = {name: xla_step_bytes(step.memory) for name, step in steps.items()}
    for name, step in steps.items():
        if step.memory is None:
            print(f"  {name:{width}s} (this backend gives no account)")
            continue
        temp = gib(step.memory.temp_size_in_bytes)
        print(f"  {name:{width}s} {gib(accounts[name])}  (temporaries {temp})")
    kind, size = peak_memory()
    print(f"Peak memory of this process: {gib(size)} ({kind}; all our steps together)")
    if compared:
        compared.print_memory()
    return accounts


def benchmark(config: Config, label: str, args, variants: list[Variant] = ()) -> dict[str, Any]:
    """Times our step, the variants' and the --compare ones in turns; prints the figures
    (module docstring) and returns ours."""
    variants = list(variants)
    refuse_batch_changes(config, variants)
    rows, length = batch_shape(config)
    batch = random_batch(config)
    print_header(config, label)
    ceiling = Ceiling(config, args.peak_flops)
    steps, flops = build_steps(config, variants, batch)
    compared = None
    if args.compare:
        from benchmarks.compare.train_step import ComparedSteps

        our_parameters = count_parameters(steps["ours"].params)
        compared = ComparedSteps(config, batch, args.compare, args.flax_wmt, our_parameters)
    try:
        wall, cpu_time = time_steps(steps, args, ceiling, compared)
    finally:
        if compared:
            compared.close()
    print_flops(flops["ours"])
    print(ceiling.describe())
    hint = cpu_allocator_hint(jax.default_backend())
    if hint:
        print(hint)
    totals = {name: f["total"] for name, f in flops.items()}
    tokens_per_second = print_times(wall, cpu_time, totals, rows * length, ceiling, args)
    if compared:
        compared.print_ratios(tokens_per_second, ceiling.peak)
    accounts = print_memory(steps, compared)
    return {
        "step_seconds": statistics.median(wall["ours"]),
        "tokens_per_second": tokens_per_second["ours"],
        "flops": flops["ours"]["total"],
        "attention_flops": flops["ours"]["attention"],
        "peak_flops": ceiling.peak,
        "measured_matmul_flops": ceiling.best,
        "variant_tokens_per_second": {v.name: tokens_per_second[v.name] for v in variants},
        "xla_step_bytes": accounts,
    }


def print_flops(flops: dict[str, float]) -> None:
    print(
        f"\nModel FLOPs per step: {flops['total'] / 1e9:.1f} GFLOP = 3 x forward "
        f"[2 x non-embedding params ({flops['non_embedding_params']:,}) x tokens "
        f"{flops['dense'] / 3e9:.1f} + output projection 2 x d_model x vocab x target tokens "
        f"{flops['output'] / 3e9:.1f} + attention 2 x B x Lq x Lkv x h x (d_k + d_v) "
        f"{flops['attention'] / 3e9:.1f} GFLOP]"
    )


def check_mode(config: Config, label: str, variants: list[Variant]) -> None:
    """Prints the model, batch, switches and analytic FLOPs per step of config and each
    variant from abstract shapes: nothing is compiled or run, so a command line can be tried
    before GPU time is spent on it."""
    refuse_batch_changes(config, variants)
    mesh = sharding.make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    named = [(label, Variant(label, config))]
    named += [(f"{label} --variant {v.name}", v) for v in variants]
    for name, variant in named:
        each = variant.config
        rows, length = batch_shape(each)
        params = trainer.build(each, mesh).abstract_state.params
        flops = model_flops(each, params, rows, length)
        forms = f"; CPU forms off: {', '.join(variant.plain)}" if variant.plain else ""
        print(
            f"{name}: {describe_model(each)}, {count_parameters(params):,} parameters; batch "
            f"{describe_batch(each)}; {describe_switches(each)}{forms}; "
            f"{flops['total'] / 1e12:.2f} TFLOP per step"
        )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flag = parser.add_argument
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--workload", choices=sorted(WORKLOADS), default="ref-small")
    source.add_argument("--config", help="A config file, configs/NAME.py[:ARG].")
    variant_help = "KEY=VALUE[,KEY=VALUE][,plain=FORM]: also time this step, in turns."
    flag("--variant", action="append", default=[], metavar="SPEC", help=variant_help)
    forms_help = "Add a variant per CPU form turned off, and one with all of them off."
    flag("--plain_forms", action="store_true", help=forms_help)
    flag("--steps", type=int, default=7, help="Timed steps (median; >= 5).")
    flag("--warmup", type=int, default=2, help="Untimed steps after compiling.")
    lead_help = "Untimed steps right before each timed one (0: strict turns)."
    flag("--lead_in", type=int, default=1, help=lead_help)
    compare_help = "Time PyTorch eager and/or flax/examples/wmt beside ours."
    flag("--compare", nargs="+", choices=["torch", "flax"], help=compare_help)
    flag("--flax_wmt", help="flax/examples/wmt folder for --compare flax.")
    flag("--peak_flops", type=float, help="Peak FLOP/s for MFU (else measured).")
    flag("--max_batch", action="store_true", help="Find the largest batch.")
    flag("--memory_cap_gb", type=float, help="CPU memory cap for --max_batch.")
    check_help = "Only build the configs and print their models and FLOPs: nothing compiles."
    flag("--check", action="store_true", help=check_help)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The flags, with args.overrides the --config.KEY=VALUE ones and args.error the
    parser's usage error."""
    parser = make_parser()
    rest, overrides = split_overrides(argv)
    args = parser.parse_args(rest)
    args.overrides, args.error = overrides, parser.error
    if args.steps < 5:
        parser.error("--steps must be at least 5.")
    if args.max_batch and (args.variant or args.plain_forms or args.compare):
        parser.error("--max_batch finds a batch size; it times no variants or comparisons.")
    if args.compare:
        from benchmarks.compare.train_step import check_args

        check_args(parser, args)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def make_config(extra: list[str]) -> Config:
        overrides = [*args.overrides, *extra]
        if args.config:
            return file_config(args.config, overrides)
        return workload_config(args.workload, overrides)

    try:
        config, label = make_config([]), args.config or args.workload
        specs = args.variant + (plain_form_specs(config) if args.plain_forms else [])
        variants = [parse_variant(spec, make_config) for spec in specs]
    except ConfigError as e:
        args.error(str(e))
    if args.check:
        check_mode(config, label, variants)
    elif args.max_batch:
        max_batch_mode(config, args.memory_cap_gb)
    else:
        benchmark(config, label, args, variants)


if __name__ == "__main__":
    main()
