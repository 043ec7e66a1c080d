"""Training: the sharded state and compiled steps on a mesh, and the loop that drives them.

`run(config, workdir)` is everything `train.py` does. The state is created already sharded
(`jax.eval_shape` gives shapes and logical axes; `jax.jit(init, out_shardings=...)` builds it in
place), and one `jax.jit` train step runs over the whole mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from transformer import allocator, checkpoint, sharding
from transformer.config import Config, ConfigError, differences, from_config_dict
from transformer.data.prefetch import prefetch
from transformer.data.tasks import Task, load_task
from transformer.evaluation import continue_prompts, evaluate_translation
from transformer.metrics import MetricWriter, summarize
from transformer.model import build_model
from transformer.nonfinite import check_streak
from transformer.optim import make_optimizer
from transformer.preemption import StopSignals
from transformer.train_step import TrainState, make_eval_step, make_train_step, model_inputs


@dataclasses.dataclass(frozen=True)
class Setup:
    """A model, its sharded state layout and its compiled-on-first-call steps on one mesh."""

    config: Config
    model: nn.Module
    mesh: jax.sharding.Mesh
    state_shardings: Any  # TrainState of NamedShardings.
    abstract_state: Any  # TrainState of jax.ShapeDtypeStruct carrying those shardings.
    batch_sharding: jax.sharding.NamedSharding
    init: Callable[[jax.Array], TrainState]  # rng -> sharded initial state.
    train_step: Callable  # (state, batch) -> (state, summed metrics); donates the state.
    eval_step: Callable  # (params, batch) -> summed metrics.


def build(config: Config, mesh: jax.sharding.Mesh) -> Setup:
    """Builds model, optimizer, shardings and jitted steps; config.model.vocab_size is set."""
    model = build_model(config.model)
    tx, schedule = make_optimizer(config)
    length = config.data.max_length
    dummy = {
        "inputs": jnp.ones((1, length), jnp.int32),
        "targets": jnp.ones((1, length), jnp.int32),
    }

    def init_boxed(rng: jax.Array) -> TrainState:
        params = model.init({"params": rng}, **model_inputs(config.model.kind, dummy))["params"]
        zero = jnp.int32(0)
        return TrainState(
            zero, params, tx.init(params), nonfinite_total=zero, nonfinite_streak=zero
        )

    with mesh_context(mesh, config):
        boxed = jax.eval_shape(init_boxed, jax.random.key(config.seed))
    state_shardings = sharding.logical_shardings(
        nn.get_partition_spec(boxed), mesh, config.logical_axis_rules
    )
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        jax.tree.map(
            lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x,
            boxed,
            is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
        ),
        state_shardings,
    )
    batch_sharding = sharding.batch_sharding(mesh, config.logical_axis_rules)
    replicated = sharding.replicated(mesh)
    return Setup(
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
            donate_argnums=0 if config.donate_state else (),
        ),
        eval_step=jax.jit(
            make_eval_step(config, model),
            in_shardings=(state_shardings.params, batch_sharding),
            out_shardings=replicated,
        ),
    )


def count_params(params: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def checkpoint_meta(config: Config) -> dict[str, Any]:
    """What a checkpoint must agree on with the config that restores it."""
    return {"model": dataclasses.asdict(config.model)}


@contextlib.contextmanager
def mesh_context(mesh: jax.sharding.Mesh, config: Config) -> Iterator[None]:
    """Makes `mesh` and the logical axis rules current for tracing and compiling."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(config.logical_axis_rules)):
        yield


class WorkdirError(ValueError):
    """The workdir cannot be created or written."""


def prepare_workdir(workdir: str) -> None:
    """Creates `workdir` and checks that this process can write there."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test_"):
            pass
    except OSError as e:
        raise WorkdirError(
            f"Cannot write to --workdir {workdir}: {e.strerror or e} ({e.filename}). Choose a "
            "directory you can write to, or fix its permissions."
        ) from e


def write_resolved_config(config_dict: ConfigDict, workdir: str) -> None:
    """Writes config.json; refuses a workdir whose earlier config differs in model or data."""
    path = os.path.join(workdir, "config.json")
    new = json.loads(config_dict.to_json_best_effort())
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        changed = differences(
            {k: old.get(k) for k in ("model", "data")}, {k: new.get(k) for k in ("model", "data")}
        )
        if changed:
            raise ConfigError(
                f"--workdir {workdir} was created with different model or data settings "
                f"({'; '.join(changed)}). Use a new --workdir, or the same settings to resume."
            )
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(new, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


def run(config_dict: ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or resumes) the experiment in `config_dict`, writing everything to `workdir`.

    Returns the final test results (loss metrics, plus BLEU and chrF for translation), or {}
    when SIGTERM or Ctrl-C stopped training early: then the last step is checkpointed, and
    the same call resumes from it.
    """
    config = from_config_dict(config_dict)
    prepare_workdir(workdir)
    write_resolved_config(config_dict, workdir)
    task = load_task(config.data, workdir)
    config = config.with_vocab_size(task.tokenizer.vocab_size)
    mesh = sharding.make_mesh(config.mesh)
    setup = build(config, mesh)
    ckpt = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        config.checkpoint_every_steps,
        config.keep_checkpoints,
    )
    meta = checkpoint_meta(config)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    try:
        with mesh_context(mesh, config):
            latest = ckpt.latest_step()
            if latest is None:
                state = setup.init(jax.random.key(config.seed))
            else:
                state = ckpt.restore(latest, setup.abstract_state, meta)
            start = int(state.step)
            print(
                f"Model: {config.model.kind}, {count_params(state.params):,} parameters, "
                f"vocabulary {config.model.vocab_size}; mesh {dict(mesh.shape)}; "
                + (f"resuming from {ckpt.directory}/{start}." if start else "from scratch.")
            )
            hint = allocator.cpu_allocator_hint(jax.default_backend())
            if hint and jax.process_index() == 0:
                print(hint)
            with StopSignals() as signals:
                state, stopped = _train_loop(setup, task, state, ckpt, meta, writer, signals)
            # Committed before the long final evaluation, which a signal may still cut short.
            ckpt.wait_until_finished()
            if stopped:
                print(
                    f"Stopped by {signals.reason()} after step {int(state.step)}; saved "
                    f"{ckpt.step_path(int(state.step))}. Run the same command to resume."
                )
                return {}
            results = _final_evaluation(setup, state.params, task)
            writer.write(int(state.step), "test", results)
    finally:
        ckpt.wait_until_finished()
        ckpt.close()
        writer.close()
    return results


def _train_loop(
    setup: Setup,
    task: Task,
    state: TrainState,
    ckpt: checkpoint.Checkpointer,
    meta: dict[str, Any],
    writer: MetricWriter,
    signals: StopSignals,
) -> tuple[TrainState, bool]:
    """Steps from state.step to config.num_train_steps, logging, evaluating, checkpointing.

    Returns the state and whether a signal stopped training early (its step is then saved).
    Metrics stay on the device until a log or checkpoint step, so the loop never waits on a
    step otherwise; the non-finite policy is checked on them before anything is saved.
    """
    config = setup.config
    start = int(state.step)
    batches = task.train_batches(
        config.batch_size,
        config.seed,
        sharding.batch_shards(setup.mesh, config.logical_axis_rules),
    )
    bar = tqdm(
        total=config.num_train_steps,
        initial=start,
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
        desc="train",
    )
    compiled: dict[Any, Callable] = {}  # One executable per batch shape (token buckets).
    on_device: list[dict[str, jax.Array]] = []
    fetched: list[dict[str, np.ndarray]] = []  # Since the last log step.
    real_tokens = total_tokens = 0
    last_time, last_step, excluded_seconds = time.perf_counter(), start, 0.0
    for ready in prefetch(batches, range(start, config.num_train_steps), setup.batch_sharding):
        shapes = tuple((k, v.shape) for k, v in sorted(ready.batch.items()))
        if shapes not in compiled:
            # Compiled ahead of the call, so that tokens/s can leave compile time out.
            compile_start = time.perf_counter()
            compiled[shapes] = setup.train_step.lower(state, ready.batch).compile()
            excluded_seconds += time.perf_counter() - compile_start
            rows, length = ready.batch["targets"].shape
            bar.write(
                f"Compiled the train step for batches of {rows} x {length} tokens in "
                f"{time.perf_counter() - compile_start:.1f} s."
            )
        state, metrics = compiled[shapes](state, ready.batch)
        on_device.append(metrics)
        real_tokens += ready.real_tokens
        total_tokens += ready.total_tokens
        done = ready.step + 1
        bar.update(1)
        stopping = signals.should_stop(done)
        final = done == config.num_train_steps
        saving = stopping or final or ckpt.should_save(done)
        logging_now = stopping or final or done % config.log_every_steps == 0
        if saving or logging_now:
            new = jax.device_get(on_device)
            on_device = []
            check_streak(
                new, done - len(new) + 1, config.nonfinite_policy, config.max_consecutive_nonfinite
            )
            fetched += new
        if saving:
            ckpt.save(done, state, meta, force=True)
        if logging_now:
            now = time.perf_counter()
            seconds = now - last_time - excluded_seconds
            summary = _train_summary(fetched, seconds, done - last_step)
            summary["padding_efficiency"] = real_tokens / max(total_tokens, 1)
            fetched, real_tokens, total_tokens = [], 0, 0
            last_time, last_step, excluded_seconds = now, done, 0.0
            writer.write(done, "train", summary)
            bar.set_postfix(
                loss=f"{summary['loss']:.3f}",
                lr=f"{summary['learning_rate']:.2e}",
                tok_s=f"{summary['target_tokens_per_sec']:,.0f}",
            )
            if summary["skipped_steps"]:
                bar.write(
                    f"step {done}: skipped {summary['skipped_steps']:.0f} updates with a NaN or "
                    f"Inf loss, gradient or update ({summary['skipped_steps_total']:.0f} in all)."
                )
        if stopping:
            ckpt.wait_until_finished()
            bar.close()
            return state, True
        if config.eval_every_steps and (done % config.eval_every_steps == 0 or final):
            eval_start = time.perf_counter()
            valid = evaluate_loss(setup, state.params, task, "validation")
            writer.write(done, "validation", valid)
            bar.write(
                f"step {done}: validation loss {valid['loss']:.3f}, "
                f"perplexity {valid['perplexity']:.2f}, accuracy {valid['accuracy']:.3f}"
            )
            excluded_seconds += time.perf_counter() - eval_start  # Not training throughput.
        if config.bleu_every_steps and (done % config.bleu_every_steps == 0 or final):
            eval_start = time.perf_counter()
            scores, _, _ = evaluate_translation(
                config, setup.model, state.params, task, "validation", setup.batch_sharding
            )
            writer.write(done, "validation", scores)
            bar.write(
                f"step {done}: validation BLEU {scores['bleu']:.2f} (greedy), "
                f"chrF {scores['chrf']:.2f}"
            )
            excluded_seconds += time.perf_counter() - eval_start
    bar.close()
    return state, False


def _train_summary(fetched: list[dict[str, np.ndarray]], seconds: float, steps: int):
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


def evaluate_loss(setup: Setup, params: Any, task: Task, split: str) -> dict[str, float]:
    """Per-token loss, NLL, perplexity and accuracy of `split` with dropout off."""
    sums = [
        setup.eval_step(params, sharding.global_batch(b, setup.batch_sharding))
        for b in task.eval_batches(split, setup.config.eval_batch_size)
    ]
    results = summarize(jax.device_get(sums))
    results.pop("tokens")
    return results


def _final_evaluation(setup: Setup, params: Any, task: Task) -> dict[str, float]:
    """Test results: loss metrics always; greedy translations and BLEU for translation."""
    config = setup.config
    results = evaluate_loss(setup, params, task, "test")
    if config.model.kind == "decoder_only":
        samples = continue_prompts(
            config, setup.model, params, task, "test", config.num_samples_to_print
        )
        for prompt, text in samples if jax.process_index() == 0 else ():
            print(f"\nprompt:     {prompt}\ngenerated:  {text}")
        print(f"\nTest perplexity {results['perplexity']:.3f} (target side, teacher-forced).")
        return results
    scores, hypotheses, _ = evaluate_translation(
        config, setup.model, params, task, "test", setup.batch_sharding
    )
    results.update(scores)
    split = task.splits["test"]
    shown = config.num_samples_to_print if jax.process_index() == 0 else 0  # Once per job.
    for i in range(min(shown, len(hypotheses))):
        print(
            f"\nsource:     {split.sources[i]}\nreference:  {split.references[i]}\n"
            f"hypothesis: {hypotheses[i]}"
        )
    print(
        f"\nTest BLEU {scores['bleu']:.2f} (sacreBLEU, greedy), chrF {scores['chrf']:.2f}, "
        f"perplexity {results['perplexity']:.3f} on {len(split)} sentences."
    )
    return results
