"""Train-step throughput, model FLOPs and MFU, optionally beside PyTorch and flax/examples/wmt.

  python benchmarks/train_step.py --workload ref-small [--compare torch flax] [--steps 7]
  python benchmarks/train_step.py --workload ref-base --peak_flops 989e12
  python benchmarks/train_step.py --config configs/big.py --set model.dtype=bfloat16
  python benchmarks/train_step.py --workload ref-base --max_batch --memory_cap_gb 8
  python benchmarks/train_step.py --workload ref-base --variant model.remat=block
  python benchmarks/train_step.py --config configs/big.py --check   (no compiling: the model,
                                                                     batch and FLOPs)

The step is the one users run: `transformer.trainer.build` (the jitted, state-donating
`make_train_step` with Adam, label smoothing and dropout) on one device, compiled ahead
(`.lower().compile()`), then called on one fixed batch of random tokens (no padding). Every
figure is a median over `--steps` steps, each ended by `jax.block_until_ready`. On CPU the
malloc changes step times by up to 2x (XLA's buffers are allocated every step): the first
line names it, and the README's Performance section says how to preload tcmalloc.

Workloads (fp32, one device, label smoothing 0.1, Adam, dropout 0.1 on residuals and
embeddings and 0.1 on attention weights, a shared 8,192-token vocabulary tied to the output
projection, 64 sentences x 64 source and 64 target tokens, post-LN):
  ref-small  d_model 256, 4 heads, d_ff 1,024, 3 encoder + 3 decoder layers
  ref-base   d_model 512, 8 heads, d_ff 2,048, 6 encoder + 6 decoder layers
Any other config: `--config configs/X.py` (batch_size x data.max_length tokens per side; with
token batching, batch_size // max_length rows). `--set KEY=VALUE` overrides config keys of
either (e.g. `--set model.remat=block`); the rest come from configs/base.py.

Model FLOPs per step (analytic, multiply-add = 2 FLOPs; the full L x L attention matrix is
counted also where it is causal), with N_src, N_tgt the source and target tokens of the batch:
  forward = 2 * (P_enc * N_src + P_dec * N_tgt)      non-embedding parameters x tokens
          + 2 * d_model * vocab * N_tgt              the (tied) output projection
          + sum over attention sublayers of 2 * batch * L_q * L_kv * heads * (d_k + d_v)
                                                      scores Q K^T and weights x V
  step    = 3 * forward                              backward = 2 x forward
P_enc: encoder parameters; P_dec: decoder parameters, with the cross-attention key/value
projections (which act on the source) counted with N_src. Embeddings and positions cost no
FLOPs. ref-small: 194.5 GFLOP per step. MFU = model FLOPs per second / peak; the peak is
`--peak_flops` or, if not given, measured in the same run: the fastest of 5 jitted 4096 x 4096
matmuls in the compute dtype, before and after the timed steps. On an accelerator: the fastest
of 10 of 8192 x 8192, before the step is built, also where --peak_flops gives a datasheet
peak, which is a lead: MFU is then printed against both.

`--compare torch` (needs `pip install -e '.[bench]'`) builds the same model in PyTorch eager
(benchmarks/torch_step.py: `nn.TransformerEncoder/DecoderLayer`, post-LN, no attention biases
so the parameter counts match, dropout in the same places, `F.cross_entropy(label_smoothing=
...)`, `torch.optim.Adam`, fp32, `torch.set_num_threads(cores)`) on the same batch, and times
it alternating with ours, step by step, so machine noise hits both alike. (PyTorch's label
smoothing spreads eps over all `vocab` tokens, ours over the `vocab - 1` non-targets: the same
cost.)

`--compare flax --flax_wmt DIR` times flax/examples/wmt's own train step (its model, loss and
`jax.pmap`-ed step, imported from the example's folder of a Flax source tree; see
benchmarks/flax_wmt.py) on the same batch in the same way, with our workload's sizes.

Each compared library steps in a process of its own (benchmarks/worker.py), as it would run
alone, and each timed step comes right after `--lead_in` untimed ones of the same library, as
in training (`time_alternating` says why).

Memory: peak device memory (`memory_stats()["peak_bytes_in_use"]`) on GPU, the process's
peak RSS on CPU (each compared library's in its own process), and XLA's own account of the
compiled step (arguments + outputs + temporaries - donated). `--max_batch` searches the
largest batch (a multiple of 8 rows) that fits, with `model.remat` "none" and "block": on GPU
by running a step until it runs out of memory; on CPU, which has no device memory limit, by
XLA's account of the step against `--memory_cap_gb`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import describe_machine, fastest_flops, other_load, sample_cpu
from benchmarks.worker import StepWorker, peak_memory, process_cpu_seconds
from configs import base
from transformer import sharding, trainer
from transformer.allocator import cpu_allocator_hint
from transformer.config import Config, ConfigError, MeshConfig, from_config_dict, with_overrides
from transformer.special_tokens import NUM_SPECIAL

WORKLOADS = {
    "ref-small": dict(d_model=256, num_heads=4, d_ff=1024, num_encoder_layers=3),
    "ref-base": dict(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6),
}
REF_ROWS, REF_LENGTH, REF_VOCAB = 64, 64, 8192
ACCELERATOR_MATMUL = 8192  # The side of the matmul that measures an accelerator's ceiling.


# ----------------------------------------------------------------------------- configs
def workload_config(
    name: str, overrides: Sequence[str] = (), rows: int = REF_ROWS, length: int = REF_LENGTH
) -> Config:
    """A reference workload as a validated Config on one device (vocab_size set)."""
    config = base.get_config()
    sizes = WORKLOADS[name]
    config.model.update(sizes)
    config.model.num_decoder_layers = sizes["num_encoder_layers"]
    config.model.dropout_rate = 0.1
    config.model.attention_dropout_rate = 0.1  # As flax/examples/wmt and PyTorch run it.
    config.model.dtype = "float32"
    config.model.max_len = max(config.model.max_len, length)
    config.label_smoothing = 0.1
    config.batch_size = rows
    config.grad_accum_steps = 1
    config.data.max_length = length
    config.data.batching = "sentences"
    config.mesh = ConfigDict(dict(data=1, fsdp=1, tensor=1))
    return from_config_dict(with_overrides(config, overrides)).with_vocab_size(REF_VOCAB)


def file_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """The config of `configs/X.py` on one device, vocabulary = data.vocab_size."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--config {path}: not a Python file.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.mesh = ConfigDict(dict(data=1, fsdp=1, tensor=1))
    config.grad_accum_steps = 1
    parsed = from_config_dict(with_overrides(config, overrides))
    return parsed.with_vocab_size(parsed.data.vocab_size)


def batch_shape(config: Config) -> tuple[int, int]:
    """(rows, length) of the benchmark batch for `config`."""
    length = config.data.max_length
    rows = config.batch_size // length if config.data.batching == "tokens" else config.batch_size
    return rows, length


def random_batch(config: Config, seed: int = 0) -> dict[str, np.ndarray]:
    """inputs, targets: [rows, length] int32 tokens in [NUM_SPECIAL, vocab): no padding."""
    rows, length = batch_shape(config)
    rng = np.random.default_rng(seed)
    draw = lambda: rng.integers(NUM_SPECIAL, config.model.vocab_size, (rows, length), np.int32)  # noqa: E731
    return {"inputs": draw(), "targets": draw()}


# ------------------------------------------------------------------------------- FLOPs
def _leaf_sizes(params: Any) -> list[tuple[str, int]]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [
        ("/".join(str(getattr(k, "key", k)) for k in path), math.prod(x.shape)) for path, x in flat
    ]


def model_flops(config: Config, params: Any, rows: int, length: int) -> dict[str, float]:
    """Analytic FLOPs of one train step (see the module docstring), by term and in total."""
    m = config.model
    n_src = n_tgt = rows * length
    p_enc = p_dec = p_cross_kv = 0
    for path, size in _leaf_sizes(params):
        if "positions" in path or path.split("/")[-1] == "embedding" or "/logits/" in path:
            continue  # Embeddings, positions and an untied output projection (counted below).
        if path.startswith("encoder/"):
            p_enc += size
        elif "cross_attention" in path and path.split("/")[-1] in ("key", "value", "key_value"):
            p_cross_kv += size
        elif path.startswith("decoder/"):
            p_dec += size
    dense = 2 * (p_enc * n_src + p_dec * n_tgt + p_cross_kv * n_src)
    output = 2 * m.d_model * m.vocab_size * n_tgt
    per_pair = 2 * rows * m.num_heads * (m.head_dim_k + m.head_dim_v)
    attention = per_pair * length * length * m.num_decoder_layers  # decoder self-attention
    if m.kind == "encoder_decoder":
        attention += per_pair * length * length * (m.num_encoder_layers + m.num_decoder_layers)
    forward = dense + output + attention
    return {
        "dense": 3 * dense,
        "output": 3 * output,
        "attention": 3 * attention,
        "total": 3 * forward,
        "non_embedding_params": p_enc + p_dec + p_cross_kv,
    }


def measured_peak_flops(dtype: jnp.dtype, n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of a jitted n x n matmul in `dtype`: the fastest of `repeats` (a peak)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    return fastest_flops(lambda: jax.block_until_ready(matmul(a, b)), 2 * n**3, repeats)


# ------------------------------------------------------------------------------ our step
@dataclasses.dataclass
class OurStep:
    """A compiled train step on one device and the state it advances."""

    run: Callable[[], None]  # One step, blocked until done.
    params: Any
    compile_seconds: float
    memory: Any  # XLA's CompiledMemoryStats, or None where the backend has none.


def build_our_step(config: Config, batch: dict[str, np.ndarray]) -> OurStep:
    mesh = sharding.make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    setup = trainer.build(config, mesh)
    with trainer.mesh_context(mesh, config):
        state = setup.init(jax.random.key(config.seed))
        device_batch = sharding.global_batch(batch, setup.batch_sharding)
        start = time.perf_counter()
        compiled = setup.train_step.lower(state, device_batch).compile()
        compile_seconds = time.perf_counter() - start
    holder = [state]

    def run() -> None:
        holder[0], metrics = compiled(holder[0], device_batch)
        jax.block_until_ready((holder[0], metrics))

    try:
        memory = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        memory = None
    return OurStep(run, jax.device_get(state.params), compile_seconds, memory)


def xla_step_bytes(memory: Any) -> int | None:
    """Bytes the compiled step holds at once: arguments + outputs + temporaries - donated."""
    if memory is None:
        return None
    return (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )


# --------------------------------------------------------------------- compared steps
def start_workers(
    config: Config, batch: dict[str, np.ndarray], compare: list[str], flax_wmt: str | None
) -> dict[str, StepWorker]:
    """A worker process for each compared library ("torch", "flax"), its step built on
    `batch`: each library steps in a process of its own (benchmarks/worker.py says why)."""
    workers: dict[str, StepWorker] = {}
    try:
        if "flax" in compare:
            # A second JAX process must not claim the accelerator memory that ours holds.
            workers["flax"] = StepWorker(
                "flax",
                "benchmarks.flax_wmt:build_flax_wmt_step",
                config,
                batch,
                flax_wmt,
                env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
            )
        if "torch" in compare:
            builder = "benchmarks.torch_step:build_torch_step"
            workers["torch"] = StepWorker("torch", builder, config, batch)
    except BaseException:
        close_workers(workers)
        raise
    return workers


def close_workers(workers: dict[str, StepWorker]) -> dict[str, tuple[str, int] | None]:
    """Stops the workers; their peak memory (None for one that had already stopped)."""
    return {name: worker.close() for name, worker in workers.items()}


# ------------------------------------------------------------------------------ timing
def time_alternating(
    runs: dict[str, Callable[[], None]],
    steps: int,
    warmup: int,
    cpu_clocks: dict[str, Callable[[], float]] | None = None,
    lead_in: int = 0,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall, CPU) seconds of `steps` timed steps of each run, the runs taking turns after
    `warmup` untimed steps each. In each turn a run takes `lead_in` untimed steps right
    before its timed one. A run's CPU time is read from its entry in `cpu_clocks` (a worker
    process's own), else from this process.

    Each round starts one run further on, so that every run follows each other one as often
    (up to one round). A lead-in step makes the timed step follow one of its own, as in
    training: on CPU under glibc's malloc the first step after seconds of another run's
    faults in memory that the machine has meanwhile reclaimed (on a VM with free-page
    reporting, from the hypervisor: up to 4x the system time), a cost that back-to-back
    training steps never pay."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    clocks = {name: (cpu_clocks or {}).get(name, process_cpu_seconds) for name in runs}
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(steps):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            run, clock = runs[name], clocks[name]
            for _ in range(lead_in):
                run()
            start, start_cpu = time.perf_counter(), clock()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(clock() - start_cpu)
    return wall, cpu


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def describe_switches(config: Config) -> str:
    m = config.model
    names = ("fused_qkv", "attention", "remat", "dtype")
    model = ", ".join(f"{k}={getattr(m, k)}" for k in names if hasattr(m, k))
    top = ", ".join(
        f"{k}={getattr(config, k)}" for k in ("cross_entropy", "dropout_rng") if hasattr(config, k)
    )
    return f"{model}; {top}"


def describe_model(config: Config) -> str:
    m = config.model
    return (
        f"{m.kind}, {m.num_encoder_layers} + {m.num_decoder_layers} layers, d_model {m.d_model}, "
        f"{m.num_heads} heads, d_ff {m.d_ff}, vocab {m.vocab_size:,}"
    )


def refuse_batch_changes(config: Config, variants: dict[str, Config]) -> None:
    """SystemExit naming a variant whose batch differs from config's: its tokens/s would not
    compare."""
    for name, variant in variants.items():
        if batch_shape(variant) != batch_shape(config):
            raise SystemExit(f"--variant {name}: changes the batch, so tokens/s would not compare.")


# ------------------------------------------------------------------------------- modes
def benchmark(
    config: Config, label: str, args: argparse.Namespace, variants: dict[str, Config] | None = None
) -> dict[str, float]:
    """Times our step (and the --compare ones and our `variants`, named by their overrides,
    in turn with it) and prints the figures."""
    refuse_batch_changes(config, variants or {})
    rows, length = batch_shape(config)
    batch = random_batch(config)
    m = config.model
    print(describe_machine())
    print(f"Load average at start: {load_average()}")
    print(
        f"{label}: {describe_model(config)}; batch {rows} x {length} source and target tokens; "
        f"dropout {m.dropout_rate} / attention {m.attention_dropout_rate}, label smoothing "
        f"{config.label_smoothing}"
    )
    print(f"Switches: {describe_switches(config)}")
    dtype = jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32
    on_cpu = jax.default_backend() == "cpu"
    matmul_n = 4096 if on_cpu else ACCELERATOR_MATMUL  # A bigger product fills a GPU.
    # The matmul ceiling: on an accelerator measured first, before the step's buffers exist,
    # so that the device's peak-memory count stays the step's (a given datasheet peak is a
    # lead, checked against it); on CPU around the steps, as other load only lowers it, unless
    # --peak_flops gives one from another run.
    measure_around_steps = on_cpu and not args.peak_flops
    ceilings = [] if on_cpu else [measured_peak_flops(dtype, matmul_n, repeats=10)]
    ours = build_our_step(config, batch)
    flops = model_flops(config, ours.params, rows, length)
    n_params = sum(x.size for x in jax.tree.leaves(ours.params))
    print(f"Ours: {n_params:,} parameters; compiled in {ours.compile_seconds:.1f} s")
    runs = {"ours": ours.run}
    step_flops = {"ours": flops["total"]}  # The compared libraries run our model's math.
    for name, variant in (variants or {}).items():
        built = build_our_step(variant, batch)
        step_flops[name] = model_flops(variant, built.params, rows, length)["total"]
        print(f"Variant {name}: compiled in {built.compile_seconds:.1f} s")
        runs[name] = built.run
    workers = start_workers(config, batch, args.compare or [], args.flax_wmt)
    try:
        for name, worker in workers.items():
            count = worker.info["parameters"]
            unequal = name != "flax" and count != n_params
            print(
                f"{worker.info['description']}, process {worker.info['pid']}: {count:,} parameters"
                + (f" (ours {n_params:,}: NOT equal)" if unequal else "")
            )
            runs[name] = worker.run
        if measure_around_steps:
            ceilings.append(measured_peak_flops(dtype, matmul_n))
        # PyTorch's BLAS and XLA's matmul kernels differ in speed on CPU, which bounds the ratio of
        # two matmul-bound steps; both peaks are measured around the same steps.
        torch_peak = "benchmarks.torch_step:measured_torch_peak_flops"
        torch_peaks = [workers["torch"].call(torch_peak)] if "torch" in workers else []
        cpu_start = sample_cpu()
        workers_cpu_start = sum(w.cpu_seconds for w in workers.values())
        times, cpu_times = time_alternating(
            runs,
            args.steps,
            args.warmup,
            {name: (lambda w=w: w.cpu_seconds) for name, w in workers.items()},
            args.lead_in,
        )
        cpu_end = sample_cpu()
        workers_cpu = sum(w.cpu_seconds for w in workers.values()) - workers_cpu_start
        if torch_peaks:
            torch_peaks.append(workers["torch"].call(torch_peak))
        worker_memory = close_workers(workers)
    finally:
        close_workers(workers)  # After an error; nothing to do once they are closed.
    peak_kind, peak_bytes = peak_memory()
    if measure_around_steps:
        ceilings.append(measured_peak_flops(dtype, matmul_n))
    matmul = f"the fastest {jnp.dtype(dtype).name} {matmul_n}^3 matmul"
    ceiling = max(ceilings, default=None)
    checked = ceiling if args.peak_flops else None  # A given peak, checked by a measured one.
    if args.peak_flops:
        peak, peak_source = args.peak_flops, "given"
    else:
        peak, peak_source = ceiling, f"measured: {matmul}"
    others, busy = other_load(cpu_start, cpu_end, os.cpu_count() or 1, workers_cpu)

    print(
        f"\nModel FLOPs per step: {flops['total'] / 1e9:.1f} GFLOP = 3 x forward "
        f"[2 x non-embedding params ({flops['non_embedding_params']:,}) x tokens "
        f"{flops['dense'] / 3e9:.1f} + output projection 2 x d_model x vocab x target tokens "
        f"{flops['output'] / 3e9:.1f} + attention 2 x B x Lq x Lkv x h x (d_k + d_v) "
        f"{flops['attention'] / 3e9:.1f} GFLOP]"
    )
    print(f"Peak: {peak / 1e9:,.1f} GFLOP/s ({peak_source})")
    if checked:
        print(
            f"Measured ceiling: {ceiling / 1e9:,.1f} GFLOP/s ({matmul}), "
            f"{ceiling / peak:.0%} of the given peak"
        )
    if torch_peaks:
        print(
            f"PyTorch's float32 4096^3 matmul: {max(torch_peaks) / 1e9:,.1f} GFLOP/s, "
            f"{max(torch_peaks) / peak:.2f}x the peak above (MFU below is against ours for both)"
        )
    print(f"Load average at end: {load_average()}")
    print(others)
    if busy:
        print("WARNING: the machine is busy; figures (PyTorch's most) are slower than idle.")
    hint = cpu_allocator_hint(jax.default_backend())
    if hint:
        print(hint)
    lead = f", each after {args.lead_in} of its own" if args.lead_in else ""
    print(f"\nmedian of {args.steps} steps (taking turns{lead}, after {args.warmup} warm-up):")
    tokens = rows * length
    result = {}
    width = max(6, *(len(name) for name in times))
    for name, seconds in times.items():
        step = statistics.median(seconds)
        achieved = step_flops.get(name, flops["total"]) / step
        result[name] = tokens / step
        print(
            f"  {name:{width}s} {step:8.3f} s/step  {tokens / step:10,.0f} target tokens/s  "
            f"{achieved / 1e9:8.1f} GFLOP/s  MFU {100 * achieved / peak:5.1f}%"
            + (f" ({100 * achieved / checked:.1f}% of the ceiling)" if checked else "")
            + "   "
            f"(min {min(seconds):.3f}, max {max(seconds):.3f}; "
            f"process CPU {statistics.median(cpu_times[name]):.2f} s)"
        )
    for other in ("torch", "flax"):
        if other in result:
            print(f"  ours / {other} tokens/s: {result['ours'] / result[other]:.2f}x")
    for name in variants or {}:
        print(f"  {name} / ours tokens/s: {result[name] / result['ours']:.2f}x")
    xla_bytes = xla_step_bytes(ours.memory)
    print(
        f"\nPeak memory: {gib(peak_bytes)} ({peak_kind}"
        + (f"; XLA's account of our step: {gib(xla_bytes)})" if xla_bytes is not None else ")")
    )
    for name, (kind, size) in worker_memory.items():
        print(f"  {name}: {gib(size)} ({kind}, in its own process)")
    return {
        "step_seconds": statistics.median(times["ours"]),
        "tokens_per_second": result["ours"],
        "flops": flops["total"],
        "attention_flops": flops["attention"],
        "peak_flops": peak,
        "measured_matmul_flops": ceiling,
        "variant_tokens_per_second": {name: result[name] for name in variants or {}},
    }


def with_rows(config: Config, rows: int) -> Config:
    """`config` with a benchmark batch of `rows` rows (batch_shape's inverse)."""
    tokens = config.data.batching == "tokens"
    return dataclasses.replace(config, batch_size=rows * config.data.max_length if tokens else rows)


def fits(config: Config, rows: int, cap_bytes: int | None) -> tuple[bool, str, int | None]:
    """(whether a step of `rows` rows fits, a note, XLA's account of it in bytes or None): on
    GPU the step is run, on CPU XLA's account is held against the cap."""
    config = with_rows(config, rows)
    step = None
    try:
        step = build_our_step(config, random_batch(config))
        if cap_bytes is None:
            step.run()
            return True, "ran", xla_step_bytes(step.memory)
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower():
            return False, "out of memory", xla_step_bytes(step.memory) if step else None
        raise
    need = xla_step_bytes(step.memory)
    if need is None:
        raise SystemExit("This backend gives no memory analysis: --memory_cap_gb cannot work.")
    return need <= cap_bytes, gib(need), need


def next_rows(
    accounts: dict[int, int | None], budget: int | None, good: int, bad: int, bisect: bool
) -> int:
    """The next batch to try, a multiple of 8 strictly between `good` (fits) and `bad` (does
    not): where the line through XLA's accounts at `good` and `bad` (before any failed, at the
    two largest batches tried) crosses the budget, an eighth of the bracket inside it at least;
    the midpoint when `bisect` or without two accounts."""
    mid = (good + bad) // 16 * 8
    margin = 8
    if accounts.get(good) is not None and accounts.get(bad) is not None:
        points = [(good, accounts[good]), (bad, accounts[bad])]
        # At least an eighth of the bracket from either end: where the account is not a line
        # (flat at first, then rising), the bracket still shrinks by that much at every try.
        margin = max(8, (bad - good) // 8)
    else:
        points = sorted((r, n) for r, n in accounts.items() if n is not None and r <= good)[-2:]
    if bisect or budget is None or len(points) < 2 or points[1][1] == points[0][1]:
        return mid
    (r0, n0), (r1, n1) = points
    guess = int(r0 + (budget - n0) * (r1 - r0) / (n1 - n0))
    return min(max(guess, good + margin), bad - margin) // 8 * 8


MAX_BATCH_LIMIT = 1 << 14  # Rows; the --max_batch search goes no higher.


def largest_batch(
    config: Config, cap_bytes: int | None, budget: int | None, limit: int = MAX_BATCH_LIMIT
) -> int:
    """The largest multiple of 8 rows up to `limit` that fits (`fits`), or 0.

    Tries 8 and 16 rows, then where the line through XLA's accounts of the step crosses the
    `budget` (bytes), narrowing the bracket of fitting and failing batches; after a try that
    did not halve the bracket, the next one bisects it. On a GPU each try compiles and runs a
    step: ref-small under 2 GiB took 6 tries with remat and 6 without, where doubling from 8
    rows and then bisecting took 10 and 14."""
    limit = limit // 8 * 8
    accounts: dict[int, int | None] = {}
    good, bad = 0, limit + 8  # Known to fit / not to fit (limit + 8: not tried).
    rows, bisect = 8, False
    while bad - good > 8:
        width = bad - good
        fit, note, accounts[rows] = fits(config, rows, cap_bytes)
        print(f"    {rows:6d} rows: {'fits' if fit else 'does not fit'} ({note})", flush=True)
        if not fit and rows == 8:
            return 0
        good, bad = (rows, bad) if fit else (good, rows)
        bisect = not bisect and bad - good > width // 2
        rows = 16 if rows == 8 and fit else next_rows(accounts, budget, good, bad, bisect)
    return good


def max_batch_mode(config: Config, args: argparse.Namespace) -> None:
    platform = jax.devices()[0].platform
    cap = None
    if platform == "cpu":
        if not args.memory_cap_gb:
            raise SystemExit("On CPU --max_batch needs --memory_cap_gb (there is no device limit).")
        cap = budget = int(args.memory_cap_gb * 2**30)
        print(f"CPU: a batch fits if XLA's account of the step is <= {gib(cap)}.")
    else:
        stats = jax.devices()[0].memory_stats() or {}
        budget = stats.get("bytes_limit")
        note = f" (the allocator's limit: {gib(budget)})" if budget else ""
        print(f"{platform}: a batch fits if one step runs without running out of memory{note}.")
    _, length = batch_shape(config)
    found = {}
    for remat in ("none", "block"):
        print(f"  model.remat={remat}:")
        variant = dataclasses.replace(config, model=dataclasses.replace(config.model, remat=remat))
        found[remat] = describe_rows(largest_batch(variant, cap, budget, MAX_BATCH_LIMIT), length)
        print(f"  -> {found[remat]}", flush=True)  # Kept if a later search is cut short.
    print(f"\nLargest batch (rows of {length} tokens per side):")
    for remat, rows in found.items():
        print(f"  remat={remat:5s} {rows}")


def describe_rows(rows: int, length: int) -> str:
    """A found batch; one at the search's limit may not be the largest that fits."""
    more = " (the search's limit: larger batches were not tried)" if rows == MAX_BATCH_LIMIT else ""
    return f"{rows:6d} rows = {rows * length:,} tokens{more}"


def check_mode(config: Config, label: str, variants: dict[str, Config]) -> None:
    """Prints the model, batch, switches and analytic FLOPs per step of config and each
    variant from abstract shapes: nothing is compiled or run, so a command line can be tried
    before a GPU lease."""
    refuse_batch_changes(config, variants)
    mesh = sharding.make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    named = {label: config, **{f"{label} --variant {v}": c for v, c in variants.items()}}
    for name, each in named.items():
        rows, length = batch_shape(each)
        params = trainer.build(each, mesh).abstract_state.params
        flops = model_flops(each, params, rows, length)
        n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
        print(
            f"{name}: {describe_model(each)}, {n_params:,} parameters; batch {rows} x {length}; "
            f"{describe_switches(each)}; {flops['total'] / 1e12:.2f} TFLOP per step"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--workload", choices=sorted(WORKLOADS), default="ref-small")
    source.add_argument("--config", help="A config file, e.g. configs/base.py.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="Also time our step with these overrides (on top of --set), in turn with the rest.",
    )
    parser.add_argument("--steps", type=int, default=7, help="Timed steps (median; >= 5).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps after compiling.")
    parser.add_argument(
        "--lead_in",
        type=int,
        default=1,
        help="Untimed steps a run takes right before each timed one (0: strictly alternating).",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        choices=["torch", "flax"],
        help="Time PyTorch eager and/or flax/examples/wmt alongside ours.",
    )
    parser.add_argument("--flax_wmt", help="flax/examples/wmt folder for --compare flax.")
    parser.add_argument("--peak_flops", type=float, help="Peak FLOP/s for MFU (else measured).")
    parser.add_argument("--max_batch", action="store_true", help="Find the largest batch.")
    parser.add_argument("--memory_cap_gb", type=float, help="CPU memory cap for --max_batch.")
    parser.add_argument(
        "--check",
        action="store_true",
        help="Only build the config(s) and print their models and FLOPs: nothing is compiled.",
    )
    args = parser.parse_args()
    if args.steps < 5:
        parser.error("--steps must be at least 5.")
    if "flax" in (args.compare or []):
        if not args.flax_wmt:
            parser.error("--compare flax needs --flax_wmt DIR (see benchmarks/flax_wmt.py).")
        # Two JAX processes share the accelerator: ours must not claim 75% of its memory
        # before the flax worker starts (read when the backend starts; nothing on CPU).
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

    def make_config(extra: list[str]) -> Config:
        try:
            if args.config:
                return file_config(args.config, [*args.set, *extra])
            return workload_config(args.workload, [*args.set, *extra])
        except ConfigError as e:
            parser.error(str(e))

    config, label = make_config([]), args.config or args.workload
    if args.max_batch and args.variant:
        parser.error("--variant times steps; --max_batch finds a batch size.")
    variants = {v: make_config(v.split(",")) for v in args.variant}
    if args.check:
        check_mode(config, label, variants)
    elif args.max_batch:
        max_batch_mode(config, args)
    else:
        benchmark(config, label, args, variants)


if __name__ == "__main__":
    main()
