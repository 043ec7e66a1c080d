"""Training: state creation on the mesh, the jit-compiled step, and the loop.

`run(config, workdir)` is everything `train.py` does. The state is created already sharded
(`jax.eval_shape` gives shapes and logical axes; `jax.jit(init, out_shardings=...)` builds it in
place), and one `jax.jit` train step runs over the whole mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from ml_collections import ConfigDict
from tqdm import tqdm

from transformer import checkpoint, sharding
from transformer.config import Config, ConfigError, ModelConfig, from_config_dict
from transformer.data.tasks import Task, load_task
from transformer.evaluation import evaluate_translation
from transformer.loss import loss_and_metrics
from transformer.metrics import MetricWriter, summarize
from transformer.model import build_model
from transformer.optim import make_optimizer

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position, which is the step."""

    step: jax.Array  # int32 scalar: optimizer updates done.
    params: Any
    opt_state: Any


def model_inputs(kind: str, batch: Batch) -> Batch:
    """The batch fields the model of `kind` consumes (a language model reads targets only)."""
    if kind == "decoder_only":
        return {k: v for k, v in batch.items() if k.startswith("targets")}
    return batch


def make_train_step(
    config: Config, model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The train step: gradients of the token-normalised loss, then one Adam update.

    With grad_accum_steps = A, the batch is cut into A strided micro-batches (so each keeps
    its share of every device) and their summed gradients are normalised by the total
    non-padding token count, exactly as one large batch would be.
    """
    accum = config.grad_accum_steps
    base_key = jax.random.key(config.seed)

    def micro_step(params, batch, rng):
        def loss_fn(p):
            logits = model.apply(
                {"params": p}, **model_inputs(config.model.kind, batch),
                deterministic=False, rngs={"dropout": rng},
            )
            return loss_and_metrics(
                logits, batch["targets"], config.label_smoothing, config.cross_entropy
            )

        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, sums

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(base_key, state.step)
        if accum == 1:
            grads, sums = micro_step(state.params, batch, rng)
        else:
            # [batch, ...] -> [accum, batch / accum, ...] with micro-batch a = rows a, a+A, ...
            micro = jax.tree.map(
                lambda x: jnp.swapaxes(x.reshape(-1, accum, *x.shape[1:]), 0, 1), batch
            )

            def body(carry, xs):
                mb, i = xs
                grads, sums = micro_step(state.params, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (grads, sums)), None

            zeros = jax.tree.map(
                jnp.zeros_like, jax.eval_shape(micro_step, state.params, batch_head(micro), rng)
            )
            (grads, sums), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
        grads = jax.tree.map(lambda g: g / jnp.maximum(sums["tokens"], 1.0), grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(sums, learning_rate=schedule(state.step), grad_norm=optax.global_norm(grads))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def batch_head(micro: Batch) -> Batch:
    """The first micro-batch of a stacked [accum, ...] batch (for shape inference)."""
    return jax.tree.map(lambda x: x[0], micro)


def make_eval_step(config: Config, model: nn.Module) -> Callable[[Any, Batch], dict[str, Any]]:
    """Summed loss metrics of a batch with dropout off."""

    def eval_step(params, batch):
        logits = model.apply({"params": params}, **model_inputs(config.model.kind, batch))
        _, sums = loss_and_metrics(
            logits, batch["targets"], config.label_smoothing, config.cross_entropy
        )
        return sums

    return eval_step


def abstract_train_state(
    config: Config, model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
) -> tuple[Callable[[jax.Array], TrainState], Any, Any]:
    """(init_fn, shardings, abstract state) where the abstract state carries its shardings."""
    length = config.data.max_length
    dummy = {"inputs": jnp.ones((1, length), jnp.int32), "targets": jnp.ones((1, length), jnp.int32)}

    def init_fn(rng: jax.Array) -> TrainState:
        params = model.init({"params": rng}, **model_inputs(config.model.kind, dummy))["params"]
        return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))

    boxed = jax.eval_shape(init_fn, jax.random.key(config.seed))
    shardings = sharding.logical_shardings(
        nn.get_partition_spec(boxed), mesh, config.logical_axis_rules
    )
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        jax.tree.map(
            lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x,
            boxed,
            is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
        ),
        shardings,
    )
    return (lambda rng: nn.meta.unbox(init_fn(rng))), shardings, abstract


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


def write_resolved_config(config_dict: ConfigDict, workdir: str) -> None:
    """Writes config.json; refuses a workdir whose earlier config differs in model or data."""
    path = os.path.join(workdir, "config.json")
    new = json.loads(config_dict.to_json_best_effort())
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        for section in ("model", "data"):
            if old.get(section) != new.get(section):
                changed = sorted(
                    k for k in set(old.get(section, {})) | set(new.get(section, {}))
                    if old.get(section, {}).get(k) != new.get(section, {}).get(k)
                )
                raise ConfigError(
                    f"--workdir {workdir} was created with a different config.{section} "
                    f"(changed: {', '.join(f'{section}.{k}' for k in changed)}). Use a new "
                    "--workdir, or the same model and data settings to resume."
                )
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(new, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def run(config_dict: ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (or resumes) the experiment in `config_dict`, writing everything to `workdir`.

    Returns the final evaluation results (test BLEU for translation).
    """
    config = from_config_dict(config_dict)
    is_chief = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    write_resolved_config(config_dict, workdir)

    task = load_task(config.data, workdir)
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, vocab_size=task.tokenizer.vocab_size)
    )
    model = build_model(config.model)
    tx, schedule = make_optimizer(config)
    mesh = sharding.make_mesh(config.mesh)
    logging.info("Mesh %s over %d devices.", dict(mesh.shape), mesh.size)

    with mesh_context(mesh, config):
        init_fn, state_shardings, abstract_state = abstract_train_state(config, model, tx, mesh)
        ckpt = checkpoint.Checkpointer(
            os.path.join(workdir, "checkpoints"), config.checkpoint_every_steps,
            config.keep_checkpoints,
        )
        meta = checkpoint_meta(config)
        latest = ckpt.latest_step()
        if latest is None:
            state = jax.jit(init_fn, out_shardings=state_shardings)(jax.random.key(config.seed))
        else:
            state = ckpt.restore(latest, abstract_state, meta)
            logging.info("Resumed from %s/%d.", ckpt.directory, latest)
        start_step = int(state.step)
        print(
            f"Model: {config.model.kind}, {count_params(state.params):,} parameters; "
            f"vocabulary {config.model.vocab_size}; mesh {dict(mesh.shape)}; "
            + (f"resuming at step {start_step}." if start_step else "starting from scratch.")
        )

        batch_sharding = sharding.batch_sharding(mesh, config.logical_axis_rules)
        metrics_sharding = sharding.replicated(mesh)
        train_step = jax.jit(
            make_train_step(config, model, tx, schedule),
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=(state_shardings, metrics_sharding),
            donate_argnums=0,
        )
        eval_step = jax.jit(
            make_eval_step(config, model),
            in_shardings=(state_shardings.params, batch_sharding),
            out_shardings=metrics_sharding,
        )
        writer = MetricWriter(workdir, enabled=is_chief)
        try:
            state = _train_loop(
                config, task, state, train_step, eval_step, ckpt, meta, writer, batch_sharding,
                start_step,
            )
            if ckpt.latest_step() != int(state.step):
                ckpt.save(int(state.step), state, meta, force=True)
            ckpt.wait_until_finished()
            results = _final_evaluation(config, model, state.params, task, eval_step, batch_sharding)
            writer.write(int(state.step), "test", results)
        finally:
            ckpt.wait_until_finished()
            ckpt.close()
            writer.close()
    return results


def _train_loop(
    config: Config,
    task: Task,
    state: TrainState,
    train_step: Callable,
    eval_step: Callable,
    ckpt: checkpoint.Checkpointer,
    meta: dict[str, Any],
    writer: MetricWriter,
    batch_sharding: jax.sharding.NamedSharding,
    start_step: int,
) -> TrainState:
    """Steps from `start_step` to config.num_train_steps, logging, evaluating, checkpointing."""
    batches = task.train_batches(config.batch_size, config.seed)
    eval_data = [
        sharding.global_batch(b, batch_sharding)
        for b in task.eval_batches("validation", config.eval_batch_size)
    ]
    is_chief = jax.process_index() == 0
    pending: list[dict[str, jax.Array]] = []
    last_time, last_step = time.perf_counter(), start_step
    bar = tqdm(
        total=config.num_train_steps, initial=start_step, disable=not is_chief,
        dynamic_ncols=True, desc="train",
    )
    if start_step < config.num_train_steps:
        # Compile ahead of the loop, so neither the first step nor tokens/s include it.
        compile_start = time.perf_counter()
        first = sharding.global_batch(batches(start_step), batch_sharding)
        train_step = train_step.lower(state, first).compile()
        bar.write(f"Compiled the train step in {time.perf_counter() - compile_start:.1f} s.")
        last_time = time.perf_counter()
    for step in range(start_step, config.num_train_steps):
        batch = sharding.global_batch(batches(step), batch_sharding)
        state, metrics = train_step(state, batch)
        pending.append(metrics)
        done = step + 1
        bar.update(1)
        ckpt.save(done, state, meta)
        if done % config.log_every_steps == 0 or done == config.num_train_steps:
            fetched = jax.device_get(pending)
            pending = []
            now = time.perf_counter()
            summary = summarize(fetched)
            summary["learning_rate"] = float(fetched[-1]["learning_rate"])
            summary["grad_norm"] = float(np.mean([m["grad_norm"] for m in fetched]))
            summary["target_tokens_per_sec"] = summary.pop("tokens") / (now - last_time)
            summary["steps_per_sec"] = (done - last_step) / (now - last_time)
            last_time, last_step = now, done
            writer.write(done, "train", summary)
            bar.set_postfix(
                loss=f"{summary['loss']:.3f}",
                lr=f"{summary['learning_rate']:.2e}",
                tok_s=f"{summary['target_tokens_per_sec']:,.0f}",
            )
        if config.eval_every_steps and (
            done % config.eval_every_steps == 0 or done == config.num_train_steps
        ):
            valid = summarize(jax.device_get([eval_step(state.params, b) for b in eval_data]))
            valid.pop("tokens")
            writer.write(done, "validation", valid)
            bar.write(
                f"step {done}: validation loss {valid['loss']:.3f}, "
                f"perplexity {valid['perplexity']:.2f}, accuracy {valid['accuracy']:.3f}"
            )
            last_time = time.perf_counter()  # Evaluation time is not training throughput.
    bar.close()
    return state


def _final_evaluation(
    config: Config,
    model: nn.Module,
    params: Any,
    task: Task,
    eval_step: Callable,
    batch_sharding: jax.sharding.NamedSharding,
) -> dict[str, float]:
    """Test-split results: perplexity always; greedy translations and BLEU for translation."""
    test_data = [sharding.global_batch(b, batch_sharding) for b in task.eval_batches("test", config.eval_batch_size)]
    results = summarize(jax.device_get([eval_step(params, b) for b in test_data]))
    results.pop("tokens")
    if config.model.kind == "encoder_decoder":
        scores, hypotheses = evaluate_translation(config, model, params, task, "test", batch_sharding)
        results.update(scores)
        split = task.splits["test"]
        for i in range(min(config.num_samples_to_print, len(hypotheses))):
            print(f"\nsource:     {split.sources[i]}\nreference:  {split.references[i]}\n"
                  f"hypothesis: {hypotheses[i]}")
        print(f"\nTest BLEU {scores['bleu']:.2f} (sacreBLEU, greedy), chrF {scores['chrf']:.2f}, "
              f"perplexity {results['perplexity']:.3f} on {len(split)} sentences.")
    else:
        print(f"\nTest perplexity {results['perplexity']:.3f}.")
    return results
