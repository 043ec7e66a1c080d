"""Training: the sharded state and compiled steps on a mesh, and the loop that drives them.

`run(config, workdir)` is everything `train.py` does. The state is created already sharded
(`jax.eval_shape` gives shapes and logical axes; `jax.jit(init, out_shardings=...)` builds it in
place), and one `jax.jit` train step runs over the whole mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from transformer import allocator, checkpoint, sharding, workdir
from transformer.config import Config, from_config_dict
from transformer.data.prefetch import ReadyBatch, prefetch
from transformer.data.tasks import Task, load_task
from transformer.evaluation import continue_prompts, describe, evaluate_split
from transformer.flops import peak_tflops, train_step_flops
from transformer.metrics import MetricWriter, summarize
from transformer.model import build_model, count_parameters
from transformer.nonfinite import check_streak
from transformer.optim import make_optimizer
from transformer.preemption import StopSignals
from transformer.profiling import StepProfiler, span
from transformer.train_step import TrainState, make_eval_step, make_train_step, model_inputs


@dataclasses.dataclass(frozen=True)
class ModelOnMesh:
    """A model placed on a mesh: its sharded state layout and jitted (compiled on first
    call) steps."""

    config: Config
    model: nn.Module
    mesh: jax.sharding.Mesh
    state_shardings: Any  # TrainState of NamedShardings.
    abstract_state: Any  # TrainState of jax.ShapeDtypeStruct carrying those shardings.
    batch_sharding: jax.sharding.NamedSharding
    init: Callable[[jax.Array], TrainState]  # rng -> sharded initial state.
    train_step: Callable  # (state, batch) -> (state, summed metrics); consumes the state.
    eval_step: Callable  # (params, batch) -> summed metrics.


def build(config: Config, mesh: jax.sharding.Mesh) -> ModelOnMesh:
    """Builds model, optimizer, shardings and jitted steps; config.model.vocab_size is set."""
    model = build_model(config.model)
    tx, schedule = make_optimizer(config)
    dummy = jnp.ones((1, config.data.max_length), jnp.int32)

    def init_boxed(rng: jax.Array) -> TrainState:
        batch = model_inputs(config.model.kind, {"inputs": dummy, "targets": dummy})
        params = model.init({"params": rng}, **batch)["params"]
        zero = jnp.int32(0)
        return TrainState(zero, params, tx.init(params), nonfinite_total=zero,
                          nonfinite_streak=zero)  # fmt: skip

    with mesh_context(mesh, config):
        boxed = jax.eval_shape(init_boxed, jax.random.key(config.seed))
    state_shardings = sharding.logical_shardings(
        nn.get_partition_spec(boxed), mesh, config.logical_axis_rules
    )
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.meta.unbox(boxed),
        state_shardings,
    )
    batch_sharding = sharding.batch_sharding(mesh, config.logical_axis_rules)
    replicated = sharding.replicated(mesh)
    return ModelOnMesh(
        config=config,
        model=model,
        mesh=mesh,
        state_shardings=state_shardings,
        abstract_state=abstract_state,
        batch_sharding=batch_sharding,
        init=jax.jit(lambda rng: nn.meta.unbox(init_boxed(rng)), out_shardings=state_shardings),
        train_step=jax.jit(
            make_train_step(config, model, tx, schedule),
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=(state_shardings, replicated),
            donate_argnums=0,  # The new state is written over the old one's buffers.
        ),
        eval_step=jax.jit(
            make_eval_step(config, model),
            in_shardings=(state_shardings.params, batch_sharding),
            out_shardings=replicated,
        ),
    )


@contextlib.contextmanager
def mesh_context(mesh: jax.sharding.Mesh, config: Config) -> Iterator[None]:
    """Makes `mesh` and the logical axis rules current for tracing and compiling."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(config.logical_axis_rules)):
        yield


def run(config_dict: ConfigDict, workdir_path: str) -> dict[str, float]:
    """Trains (or resumes) the experiment in `config_dict`, writing everything to the workdir.

    Returns the final test results (loss metrics, plus BLEU and chrF for translation), or {}
    when SIGTERM or Ctrl-C stopped training early: then the last step is checkpointed, and
    the same call resumes from it.
    """
    config = from_config_dict(config_dict)
    mesh = sharding.make_mesh(config.mesh)  # Before the workdir: a mesh that cannot be built
    workdir.prepare(workdir_path)  # leaves nothing behind.
    workdir.write_config(config_dict, config, workdir_path)
    task = load_task(config.data, workdir_path)
    config = config.with_vocab_size(task.tokenizer.vocab_size)
    placed = build(config, mesh)
    ckpt = checkpoint.Checkpointer(
        os.path.join(workdir_path, "checkpoints"),
        config.checkpoint_every_steps,
        config.keep_checkpoints,
    )
    writer = MetricWriter(workdir_path, enabled=jax.process_index() == 0)
    try:
        with mesh_context(mesh, config):
            state = _initial_state(placed, ckpt)
            with StopSignals(ckpt.reached_preemption) as signals:
                profiler = StepProfiler(
                    workdir_path, config.profile_skip_steps, config.profile_num_steps
                )
                loop = Loop(placed, task, ckpt, writer, signals, profiler)
                state, stopped = loop.run(state)
            # Committed before the long final evaluation, which a signal may still cut short.
            ckpt.wait_until_finished()
            if stopped:
                print(
                    f"Stopped by {signals.reason()} after step {int(state.step)}; saved "
                    f"{ckpt.step_path(int(state.step))}. Run the same command to resume."
                )
                return {}
            results = _final_evaluation(placed, state.params, task)
            writer.write(int(state.step), "test", results)
    finally:
        ckpt.wait_until_finished()
        ckpt.close()
        writer.close()
    return results


def _initial_state(placed: ModelOnMesh, ckpt: checkpoint.Checkpointer) -> TrainState:
    """The newest readable checkpoint's state, or a fresh one; says which on stdout."""
    config = placed.config
    meta = workdir.checkpoint_meta(config)
    restored = ckpt.restore_newest(placed.abstract_state, meta, set_aside=True)
    state = placed.init(jax.random.key(config.seed)) if restored is None else restored[1]
    start = int(state.step)
    device = placed.mesh.devices.flat[0]
    print(
        f"Model: {config.model.kind}, {count_parameters(state.params):,} parameters, "
        f"vocabulary {config.model.vocab_size}; mesh {dict(placed.mesh.shape)} of "
        f"{device.platform} devices ({device.device_kind}); "
        + (f"resuming from {ckpt.step_path(start)}." if start else "from scratch.")
    )
    hint = allocator.cpu_allocator_hint(jax.default_backend())
    if hint and jax.process_index() == 0:
        print(hint)
    return state


class Loop:
    """The training loop from a state's step to config.num_train_steps: logging, validation
    and checkpoints at their intervals, and a stop at a step boundary on a signal.

    Metrics stay on the device until a log or checkpoint step, so the loop never waits on a
    step otherwise; the non-finite policy is checked on them before anything is saved.
    """

    def __init__(
        self,
        placed: ModelOnMesh,
        task: Task,
        ckpt: checkpoint.Checkpointer,
        writer: MetricWriter,
        signals: StopSignals,
        profiler: StepProfiler,
    ):
        self.placed, self.config, self.task = placed, placed.config, task
        self.profiler = profiler
        self.ckpt, self.writer, self.signals = ckpt, writer, signals
        self.compiled: dict[Any, Callable] = {}  # One executable per batch shape (buckets).
        self.on_device: list[dict[str, jax.Array]] = []  # Metrics not fetched yet.
        self.fetched: list[dict[str, np.ndarray]] = []  # Since the last log step.
        self.tokens = [0, 0]  # Real and all token slots since the last log step.
        self.last_log = (time.perf_counter(), 0)  # (time, step) of the last log.
        self.excluded_seconds = 0.0  # Compiling and evaluating: not training throughput.
        self.shape_flops: dict[Any, float] = {}  # Model FLOPs of a step, per batch shape.
        self.flops = 0.0  # Since the last log step.
        device = placed.mesh.devices.flat[0]
        self.peak = peak_tflops(
            device.device_kind, self.config.model.dtype, self.config.peak_tflops_per_device
        )

    def run(self, state: TrainState) -> tuple[TrainState, bool]:
        """Returns the last state and whether a signal stopped training (its step saved)."""
        config = self.config
        start = int(state.step)
        self.last_log = (time.perf_counter(), start)
        batches = self.task.train_batches(
            config.batch_size,
            config.seed,
            sharding.batch_shards(self.placed.mesh, config.logical_axis_rules),
        )
        self.bar = tqdm(total=config.num_train_steps, initial=start, desc="train",
                        disable=jax.process_index() != 0, dynamic_ncols=True)  # fmt: skip
        steps = range(start, config.num_train_steps)
        try:
            for ready in prefetch(batches, steps, self.placed.batch_sharding):
                with self.profiler.step(ready.step):
                    state = self.step(state, ready)
                done = ready.step + 1
                stopping = self.signals.should_stop(done)
                self.record(state, done, stopping)
                if stopping:
                    self.ckpt.wait_until_finished()
                    return state, True
                with span("evaluate"):
                    self.evaluate(state, done)
                self.profiler.after(ready.step, state)
        finally:
            self.profiler.stop()
            self.bar.close()
        return state, False

    def step(self, state: TrainState, ready: ReadyBatch) -> TrainState:
        """One train step, compiled ahead of its first batch shape (so that tokens/s can
        leave compile time out)."""
        batch = ready.batch
        shapes = tuple((k, v.shape) for k, v in sorted(batch.items()))
        if shapes not in self.compiled:
            started = time.perf_counter()
            self.compiled[shapes] = self.placed.train_step.lower(state, batch).compile()
            seconds = time.perf_counter() - started
            self.excluded_seconds += seconds
            rows, length = batch["targets"].shape
            source = batch.get("inputs", batch["targets"]).shape[1]
            tokens = f"{length}" if source == length else f"({source} source, {length} target)"
            self.bar.write(f"Compiled the train step for batches of {rows} x {tokens} tokens "
                           f"in {seconds:.1f} s{_memory(self.compiled[shapes])}.")  # fmt: skip
            flops = train_step_flops(self.config, state.params, rows, source, length)
            self.shape_flops[shapes] = flops["total"]
        state, metrics = self.compiled[shapes](state, batch)
        self.flops += self.shape_flops[shapes]
        self.on_device.append(metrics)
        self.tokens[0] += ready.real_tokens
        self.tokens[1] += ready.total_tokens
        self.bar.update(1)
        return state

    def record(self, state: TrainState, done: int, stopping: bool) -> None:
        """Fetches metrics, applies the non-finite policy, checkpoints and logs where due."""
        config = self.config
        final = done == config.num_train_steps
        saving = stopping or final or self.ckpt.should_save(done)
        if not (saving or stopping or final or done % config.log_every_steps == 0):
            return
        new = jax.device_get(self.on_device)
        self.on_device = []
        check_streak(new, done - len(new) + 1, config.nonfinite_policy,
                     config.max_consecutive_nonfinite)  # fmt: skip
        self.fetched += new
        if saving:
            with span("checkpoint_save"):
                self.ckpt.save(done, state, workdir.checkpoint_meta(config), force=True)
        if stopping or final or done % config.log_every_steps == 0:
            self.log(done)

    def throughput(self, seconds: float, tokens_per_sec: float) -> dict[str, float]:
        """Target tokens/s and model TFLOP/s per device since the last log, and MFU where
        the device's peak is known (transformer/flops.py)."""
        devices = self.placed.mesh.size
        tflops = self.flops / max(seconds, 1e-9) / devices / 1e12
        out = {"target_tokens_per_sec_per_device": tokens_per_sec / devices,
               "tflops_per_device": tflops}  # fmt: skip
        if self.peak:
            out["mfu"] = tflops / self.peak
        return out

    def log(self, done: int) -> None:
        now = time.perf_counter()
        seconds = now - self.last_log[0] - self.excluded_seconds
        summary = train_summary(self.fetched, seconds, done - self.last_log[1])
        summary["padding_efficiency"] = self.tokens[0] / max(self.tokens[1], 1)
        summary |= self.throughput(seconds, summary["target_tokens_per_sec"])
        self.fetched, self.tokens, self.flops = [], [0, 0], 0.0
        self.last_log, self.excluded_seconds = (now, done), 0.0
        self.writer.write(done, "train", summary)
        self.bar.set_postfix(
            loss=f"{summary['loss']:.3f}",
            lr=f"{summary['learning_rate']:.2e}",
            tok_s=f"{summary['target_tokens_per_sec']:,.0f}",
            tflops_dev=f"{summary['tflops_per_device']:.3g}",
            **({"mfu": f"{summary['mfu']:.1%}"} if "mfu" in summary else {}),
        )
        if summary["skipped_steps"]:
            self.bar.write(
                f"step {done}: skipped {summary['skipped_steps']:.0f} updates with a NaN or Inf "
                f"loss, gradient or update ({summary['skipped_steps_total']:.0f} in all)."
            )

    def evaluate(self, state: TrainState, done: int) -> None:
        """Validation loss and greedy BLEU or ROUGE at their intervals (and after the last step)."""
        config, final = self.config, done == self.config.num_train_steps
        started = time.perf_counter()
        if config.eval_every_steps and (done % config.eval_every_steps == 0 or final):
            valid = evaluate_loss(self.placed, state.params, self.task, "validation")
            self.writer.write(done, "validation", valid)
            self.bar.write(
                f"step {done}: validation loss {valid['loss']:.3f}, "
                f"perplexity {valid['perplexity']:.2f}, accuracy {valid['accuracy']:.3f}"
            )
        if config.bleu_every_steps and (done % config.bleu_every_steps == 0 or final):
            scores, _, _ = evaluate_split(
                config, self.placed.model, state.params, self.task, "validation",
                self.placed.batch_sharding,
            )  # fmt: skip
            self.writer.write(done, "validation", scores)
            self.bar.write(f"step {done}: validation {describe(scores)} (greedy)")
        self.excluded_seconds += time.perf_counter() - started


def _memory(compiled: Any) -> str:
    """The log's suffix for a compiled step: its temporaries per device by XLA's own account
    (working memory beyond the state and batch), where the backend gives one; else ""."""
    analysis = compiled.memory_analysis()
    temp = getattr(analysis, "temp_size_in_bytes", None)
    return f", {temp / 2**30:.2f} GiB of temporaries" if temp is not None else ""


def train_summary(fetched: list[dict[str, np.ndarray]], seconds: float, steps: int):
    """Loss metrics of the applied steps among `fetched`, throughput, and skipped counts."""
    # Skipped steps' NaNs would hide the others; if all were skipped, their NaNs show.
    applied = [m for m in fetched if not m["nonfinite"]] or fetched
    summary = summarize(applied)
    summary["learning_rate"] = float(fetched[-1]["learning_rate"])
    summary["grad_norm"] = float(np.mean([m["grad_norm"] for m in applied]))
    summary["target_tokens_per_sec"] = summarize(fetched)["tokens"] / seconds
    summary.pop("tokens")
    summary["steps_per_sec"] = steps / seconds
    summary["skipped_steps"] = float(sum(m["nonfinite"] for m in fetched))
    summary["skipped_steps_total"] = float(fetched[-1]["nonfinite_total"])
    return summary


def evaluate_loss(placed: ModelOnMesh, params: Any, task: Task, split: str) -> dict[str, float]:
    """Per-token loss, NLL, perplexity and accuracy of `split` with dropout off."""
    sums = [
        placed.eval_step(params, sharding.global_batch(b, placed.batch_sharding))
        for b in task.eval_batches(split, placed.config.eval_batch_size)
    ]
    results = summarize(jax.device_get(sums))
    results.pop("tokens")
    return results


def _final_evaluation(placed: ModelOnMesh, params: Any, task: Task) -> dict[str, float]:
    """Test results: loss metrics always; greedy outputs and BLEU or ROUGE for a translator
    or summariser."""
    config = placed.config
    results = evaluate_loss(placed, params, task, "test")
    shown = config.num_samples_to_print if jax.process_index() == 0 else 0  # Once per job.
    if config.model.kind == "decoder_only":
        # Every process decodes (one computation over the mesh); the first one prints.
        count = config.num_samples_to_print
        samples = continue_prompts(config, placed.model, params, task, "test", count)
        for prompt, text in samples[:shown]:
            print(f"\nprompt:     {prompt}\ngenerated:  {text}")
        print(f"\nTest perplexity {results['perplexity']:.3f} (target side, teacher-forced).")
        return results
    scores, hypotheses, _ = evaluate_split(
        config, placed.model, params, task, "test", placed.batch_sharding
    )
    results.update(scores)
    split = task.splits["test"]
    for i in range(min(shown, len(hypotheses))):
        print(
            f"\nsource:     {split.sources[i]}\nreference:  {split.references[i]}\n"
            f"hypothesis: {hypotheses[i]}"
        )
    if config.data.metric == "bleu":
        line = f"BLEU {scores['bleu']:.2f} (sacreBLEU, greedy), chrF {scores['chrf']:.2f}"
    else:
        line = f"{describe(scores)} (rouge-score F1, stemmed, greedy)"
    unit = "sentences" if config.data.metric == "bleu" else "summaries"
    print(f"\nTest {line}, perplexity {results['perplexity']:.3f} on {len(split)} {unit}.")
    return results
