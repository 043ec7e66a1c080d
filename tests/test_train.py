"""Training end to end on real components: sharded steps, Orbax checkpoints, resume, CLI."""

import asyncio
import contextlib
import dataclasses
import gc
import io
import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import sacrebleu

from transformer import sharding, trainer
from transformer.allocator import cpu_allocator_hint
from transformer.checkpoint import Checkpointer, CheckpointMismatchError, CheckpointReadError
from transformer.config import MeshConfig, from_config_dict
from transformer.data.tasks import load_task
from transformer.evaluation import translate_split
from transformer.workdir import checkpoint_meta

from .model_configs import tiny_config
from .xla_flags import one_device_env

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def task_and_config(tmp_path_factory):
    config = from_config_dict(tiny_config(**{"model.attention_dropout_rate": 0.1}))
    task = load_task(config.data, str(tmp_path_factory.mktemp("vocab")))
    return task, config.with_vocab_size(task.tokenizer.vocab_size)


def run_steps(config, task, mesh_config, devices, num_steps):
    """Losses and final params of `num_steps` train steps on a mesh over `devices`."""
    config = dataclasses.replace(config, mesh=mesh_config)
    mesh = sharding.make_mesh(mesh_config, devices)
    setup = trainer.build(config, mesh)
    batches = task.train_batches(
        config.batch_size, config.seed, sharding.batch_shards(mesh, config.logical_axis_rules)
    )
    losses = []
    with trainer.mesh_context(mesh, config):
        state = setup.init(jax.random.key(config.seed))
        for step in range(num_steps):
            state, m = setup.train_step(
                state, sharding.global_batch(batches(step), setup.batch_sharding)
            )
            losses.append(float(m["loss_sum"] / m["tokens"]))
    return losses, jax.device_get(state.params), state


@pytest.mark.parametrize(
    "mesh_config, remat",
    [
        # The default run keeps the mesh that uses all three axes; the others run with -m slow.
        pytest.param(MeshConfig(8, 1, 1), "none", marks=pytest.mark.slow),
        pytest.param(MeshConfig(2, 4, 1), "none", marks=pytest.mark.slow),
        (MeshConfig(2, 2, 2), "none"),
        pytest.param(MeshConfig(2, 2, 2), "block", marks=pytest.mark.slow),
    ],
    ids=["data8", "data2-fsdp4", "data2-fsdp2-tensor2", "data2-fsdp2-tensor2-remat"],
)
def test_sharded_train_step_matches_one_device(task_and_config, mesh_config, remat):
    """`remat` applies to the sharded run only: against the plain step on one device."""
    task, config = task_and_config
    assert len(jax.devices()) == 8
    one_losses, one_params, _ = run_steps(
        config, task, MeshConfig(1, 1, 1), jax.devices()[:1], num_steps=3
    )
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, remat=remat))
    losses, params, state = run_steps(config, task, mesh_config, jax.devices(), num_steps=3)
    np.testing.assert_allclose(losses, one_losses, rtol=2e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, one_params
    )
    # Parameters really are spread over the mesh, as the logical axis rules say:
    # an FFN kernel ("embed", "mlp") is split d_model over fsdp and d_ff over tensor.
    kernel = state.params["encoder"]["layer_0"]["ffn"]["wi"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == (
        config.model.d_model // mesh_config.fsdp,
        config.model.d_ff // mesh_config.tensor,
    )


def test_gradient_accumulation_matches_one_large_batch(task_and_config):
    task, config = task_and_config
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, dropout_rate=0.0, attention_dropout_rate=0.0),
    )
    devices = jax.devices()[:1]
    losses, params, _ = run_steps(config, task, MeshConfig(1, 1, 1), devices, 2)
    accum = dataclasses.replace(config, grad_accum_steps=4)
    accum_losses, accum_params, _ = run_steps(accum, task, MeshConfig(1, 1, 1), devices, 2)
    np.testing.assert_allclose(accum_losses, losses, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), accum_params, params
    )


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def restore_newest(workdir, config_dict):
    """(state of the newest checkpoint on the config's mesh, the placed model, the task)."""
    config = from_config_dict(config_dict)
    task = load_task(config.data, str(workdir))
    config = config.with_vocab_size(task.tokenizer.vocab_size)
    setup = trainer.build(config, sharding.make_mesh(config.mesh))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), 1, 5)
    try:
        state = ckpt.restore(ckpt.latest_step(), setup.abstract_state, checkpoint_meta(config))
    finally:
        ckpt.close()
    return state, setup, task


def restore_params(workdir, config_dict):
    state, _, _ = restore_newest(workdir, config_dict)
    return int(state.step), jax.device_get(state.params)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """tiny.py trained in this process, printing the translation of every test sentence."""
    workdir = tmp_path_factory.mktemp("straight")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        results = trainer.run(tiny_config(num_samples_to_print=64), str(workdir))
    return workdir, results, out.getvalue()


def test_training_lowers_the_loss_and_writes_its_outputs(straight_run):
    workdir, results, _ = straight_run
    train = [r for r in read_metrics(workdir) if r["split"] == "train"]
    assert [r["step"] for r in train] == [10, 20, 30, 40]
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    assert {"learning_rate", "target_tokens_per_sec", "grad_norm"} <= set(train[0])
    # Throughput per device on every log line; MFU only with a peak, which a CPU has none of.
    assert train[0]["tflops_per_device"] > 0 and "mfu" not in train[0]
    assert train[0]["target_tokens_per_sec_per_device"] == pytest.approx(
        train[0]["target_tokens_per_sec"] / len(jax.devices())
    )
    valid = [r for r in read_metrics(workdir) if r["split"] == "validation" and "loss" in r]
    assert [r["step"] for r in valid] == [20, 40] and valid[1]["loss"] < valid[0]["loss"]
    bleu = [r for r in read_metrics(workdir) if r["split"] == "validation" and "bleu" in r]
    assert [r["step"] for r in bleu] == [40] and {"chrf", "tok_bleu"} <= set(bleu[0])
    assert results["perplexity"] > 1.0
    assert (workdir / "config.json").exists() and (workdir / "vocab.txt").exists()
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert not (workdir / "tensorboard" / "plugins").exists()  # No profile unless asked.
    assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "40"]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["num_train_steps"] == 40 and saved["model"]["d_model"] == 32


def test_the_bleu_and_chrf_logged_are_sacrebleus_of_the_greedy_translations(straight_run):
    workdir, results, out = straight_run
    # Test: the trainer printed every test sentence's reference and translation, in order.
    printed = re.findall(r"^reference:  (.*)\nhypothesis: (.*)$", out, re.MULTILINE)
    state, setup, task = restore_newest(workdir, tiny_config())
    references = list(task.splits["test"].references)
    assert [reference for reference, _ in printed] == references
    hypotheses = [hypothesis for _, hypothesis in printed]
    assert results["bleu"] == sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert results["chrf"] == sacrebleu.corpus_chrf(hypotheses, [references]).score
    assert f"Test BLEU {results['bleu']:.2f} (sacreBLEU, greedy)" in out
    # Validation, at the last step: the final parameters' greedy translations, made again.
    assert int(state.step) == 40
    (logged,) = [r for r in read_metrics(workdir) if r["split"] == "validation" and "bleu" in r]
    with trainer.mesh_context(setup.mesh, setup.config):
        translations = translate_split(
            setup.config, setup.model, state.params, task, "validation", setup.batch_sharding
        )
    references = list(task.splits["validation"].references)
    assert logged["bleu"] == sacrebleu.corpus_bleu(translations, [references]).score
    assert logged["chrf"] == sacrebleu.corpus_chrf(translations, [references]).score


@pytest.mark.slow
def test_resumed_run_continues_at_the_saved_step_and_matches_a_straight_run(straight_run, tmp_path):
    straight_dir, _, _ = straight_run
    trainer.run(tiny_config(num_train_steps=20), str(tmp_path))
    step, params_20 = restore_params(tmp_path, tiny_config())
    assert step == 20
    trainer.run(tiny_config(), str(tmp_path))
    steps = [r["step"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert steps == [10, 20, 30, 40]  # Nothing repeated, nothing skipped.
    straight_losses = [r["loss"] for r in read_metrics(straight_dir) if r["split"] == "train"]
    resumed_losses = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert resumed_losses == straight_losses  # same batches, same dropout, same updates
    step, resumed = restore_params(tmp_path, tiny_config())
    _, straight = restore_params(straight_dir, tiny_config())
    assert step == 40
    # Same mesh, same batches (a function of the step), same dropout keys: bit-identical.
    jax.tree.map(np.testing.assert_array_equal, resumed, straight)
    assert not np.array_equal(
        params_20["encoder"]["layer_0"]["ffn"]["wi"]["kernel"],
        resumed["encoder"]["layer_0"]["ffn"]["wi"]["kernel"],
    )


@pytest.mark.slow
def test_checkpoint_roundtrip_restores_identical_state(task_and_config, tmp_path):
    task, config = task_and_config
    _, _, state = run_steps(config, task, MeshConfig(2, 4, 1), jax.devices(), num_steps=2)
    setup = trainer.build(config, state.params["embed"]["embedding"].sharding.mesh)
    meta = checkpoint_meta(config)
    ckpt = Checkpointer(str(tmp_path), every_steps=1, keep=2)
    ckpt.save(2, state, meta)
    ckpt.wait_until_finished()
    restored = ckpt.restore(2, setup.abstract_state, meta)
    assert int(restored.step) == 2
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
    jax.tree.map(
        lambda r, s: r.sharding == s.sharding or pytest.fail("sharding differs"),
        restored.params,
        state.params,
    )
    other = dataclasses.replace(config.model, d_model=64)
    with pytest.raises(CheckpointMismatchError, match=r"model\.d_model: 32 -> 64"):
        ckpt.restore(2, setup.abstract_state, {"model": dataclasses.asdict(other)})
    ckpt.close()


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=one_device_env(),
    )


@pytest.mark.slow
def test_cli_trains_with_overrides(tmp_path):
    out = run_cli(
        "--config",
        "configs/tiny.py",
        "--workdir",
        str(tmp_path),
        "--config.num_train_steps=5",
        "--config.model.dropout_rate=0.2",
        "--config.peak_tflops_per_device=0.5",
    )
    assert out.returncode == 0, out.stderr
    assert "Test BLEU" in out.stdout
    (logged,) = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert logged["mfu"] == pytest.approx(logged["tflops_per_device"] / 0.5)
    assert "mfu=" in out.stderr and "tflops_dev=" in out.stderr
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_train_steps"] == 5 and saved["model"]["dropout_rate"] == 0.2
    assert os.listdir(tmp_path / "checkpoints") == ["5"]


def test_bfloat16_training_tracks_float32_and_keeps_float32_master_weights(task_and_config):
    task, config = task_and_config
    devices = jax.devices()[:1]
    losses, _, _ = run_steps(config, task, MeshConfig(1, 1, 1), devices, 3)
    bf16 = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype="bfloat16"))
    bf16_losses, bf16_params, _ = run_steps(bf16, task, MeshConfig(1, 1, 1), devices, 3)
    np.testing.assert_allclose(bf16_losses, losses, rtol=0.02)
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(bf16_params))


def test_gradient_clipping_scales_the_gradient_adam_sees_to_the_clip_norm(task_and_config):
    task, config = task_and_config
    clip = 0.01
    config = dataclasses.replace(config, grad_clip_norm=clip, mesh=MeshConfig(1, 1, 1))
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    setup = trainer.build(config, mesh)
    batch = task.train_batches(config.batch_size, config.seed)(0)
    with trainer.mesh_context(mesh, config):
        state = setup.init(jax.random.key(config.seed))
        state, metrics = setup.train_step(state, sharding.global_batch(batch, setup.batch_sharding))
    adam = next(
        x
        for x in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
        if hasattr(x, "mu")
    )
    mu, nu = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(m)]) for m in (adam.mu, adam.nu))
    gradient_norm = float(metrics["grad_norm"])  # Of the gradient before clipping.
    assert gradient_norm > 10 * clip
    # After one step Adam's moments are mu = (1 - b1) g and nu = (1 - b2) g^2 of the gradient
    # g it was given: the model's gradient scaled to the clip norm, as a whole.
    seen = mu / (1 - config.adam_b1)
    assert np.linalg.norm(seen) == pytest.approx(clip, rel=1e-5)
    np.testing.assert_allclose(nu, (1 - config.adam_b2) * seen**2, rtol=1e-4, atol=1e-30)


def test_decoder_only_language_model_trains_through_the_same_loop(tmp_path, capsys):
    config = tiny_config(
        **{"model.kind": "decoder_only", "model.num_encoder_layers": 0, "bleu_every_steps": 0}
    )
    results = trainer.run(config, str(tmp_path))
    train = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    assert "bleu" not in results and results["perplexity"] > 1.0
    out = capsys.readouterr().out
    assert "Test perplexity" in out and "generated:" in out
    # On CPU under glibc's malloc the run says how to preload tcmalloc; otherwise it does not.
    hint = cpu_allocator_hint(jax.default_backend())
    assert (hint in out) if hint else ("LD_PRELOAD" not in out)


def test_checkpointer_saves_on_its_interval_and_keeps_the_newest(tmp_path):
    ckpt = Checkpointer(str(tmp_path), every_steps=2, keep=2)
    state = {"w": np.arange(4.0)}
    saved = [step for step in range(1, 9) if ckpt.save(step, state, {"model": {}})]
    ckpt.wait_until_finished()
    assert saved == [2, 4, 6, 8]
    assert ckpt.all_steps() == [6, 8] and ckpt.latest_step() == 8
    ckpt.close()


def test_an_abandoned_read_of_a_damaged_checkpoint_is_not_logged_later(tmp_path, caplog):
    ckpt = Checkpointer(str(tmp_path), every_steps=1, keep=1)
    ckpt.save(1, {f"w{i}": np.arange(1000.0) + i for i in range(8)}, {"model": {}})
    ckpt.wait_until_finished()
    for path in (tmp_path / "1" / "state").rglob("d/*"):  # Every data file cut in half.
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    abstract = {f"w{i}": jax.ShapeDtypeStruct((1000,), np.float64) for i in range(8)}
    with pytest.raises(CheckpointReadError) as failed:
        ckpt.restore(1, abstract, {"model": {}})
    ckpt.close()
    read_error = failed.value.__cause__  # TensorStore's own error, as the other reads get it.
    assert "tensorstore_spec" in str(read_error)

    def abandon(exception: Exception) -> None:
        """A future that failed and that nobody awaits, collected as asyncio reports it."""
        loop = asyncio.new_event_loop()
        future = loop.create_future()
        future.set_exception(exception)
        del future
        gc.collect()
        loop.close()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        abandon(read_error)
        assert not caplog.records
        abandon(RuntimeError("some other failure"))
    assert [r.getMessage().partition("\n")[0] for r in caplog.records] == [
        "Future exception was never retrieved"
    ]
