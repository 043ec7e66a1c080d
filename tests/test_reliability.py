"""Reliability on real processes, signals and Orbax checkpoints on disk: SIGTERM and Ctrl-C
stop at a step with a checkpoint, kill -9 mid-save loses nothing committed, a killed and
restarted run is bit-identical to one that never stopped, NaN/Inf steps are skipped or stop
the run, and a checkpoint restores onto other meshes."""

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from transformer import sharding, trainer
from transformer.checkpoint import Checkpointer
from transformer.config import MeshConfig, from_config_dict
from transformer.data.tasks import load_task
from transformer.nonfinite import NonFiniteError
from transformer.preemption import StopSignals
from transformer.workdir import checkpoint_meta

from .model_configs import tiny_config
from .xla_flags import FAST_COMPILE

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 60
CLI_OVERRIDES = {
    "num_train_steps": STEPS,
    "log_every_steps": 1,  # Every step's loss in metrics.jsonl.
    "checkpoint_every_steps": 5,
    "keep_checkpoints": 3,
    "eval_every_steps": 0,
    "bleu_every_steps": 0,
    "num_samples_to_print": 0,
}
TMP_SUFFIX = ".orbax-checkpoint-tmp"


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """One CPU device, and a compilation cache shared by this module's runs (restarts are
    then seconds, not tens of seconds; the executables are the same)."""
    return {
        **os.environ,
        "XLA_FLAGS": FAST_COMPILE,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


# Runs a command with SIGINT at its default, as in a terminal, even where pytest runs as a
# shell's background job (whose children inherit SIGINT ignored, which StopSignals then leaves
# alone): a Python that resets it, then becomes the command (no fork of this multithreaded
# process with code to run in the child).
SIGINT_AS_IN_A_TERMINAL = (
    sys.executable, "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
)  # fmt: skip


def start_training(workdir, env, launcher=()) -> subprocess.Popen:
    flags = [f"--config.{k}={v}" for k, v in CLI_OVERRIDES.items()]
    return subprocess.Popen(
        [*launcher, sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir",
         str(workdir), *flags],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def train_to_the_end(workdir, env) -> str:
    proc = start_training(workdir, env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out


def wait_for(condition, proc, timeout=300.0, poll=0.001):
    """Polls `condition()` until it returns something truthy, while `proc` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"training ended first: {proc.communicate()[1][-3000:]}")
        time.sleep(poll)
    pytest.fail("timed out")


def train_records(workdir):
    """Train metrics records of metrics.jsonl in order (skipping a line being written)."""
    records = []
    path = workdir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record["split"] == "train":
                records.append(record)
    return records


def losses_by_step(workdir):
    """step -> every loss logged for it (a step trained again after a restart logs twice)."""
    found = {}
    for r in train_records(workdir):
        found.setdefault(r["step"], []).append(r["loss"])
    return found


def restore_state(workdir, step=None, mesh_config=None, devices=None):
    """The train state of checkpoint `step` (default: the newest) of a tiny workdir."""
    config = from_config_dict(tiny_config(**CLI_OVERRIDES))
    task = load_task(config.data, str(workdir))
    config = config.with_vocab_size(task.tokenizer.vocab_size)
    if mesh_config is not None:
        config = dataclasses.replace(config, mesh=mesh_config)
    setup = trainer.build(config, sharding.make_mesh(config.mesh, devices))
    ckpt = Checkpointer(str(workdir / "checkpoints"), read_only=True)
    try:
        step = ckpt.latest_step() if step is None else step
        with trainer.mesh_context(setup.mesh, config):
            state = ckpt.restore(step, setup.abstract_state, checkpoint_meta(config))
    finally:
        ckpt.close()
    return state, setup, task


def assert_same_run(workdir, straight_dir):
    """Every step's loss (each time it was trained) and the final state equal bit for bit."""
    straight = losses_by_step(straight_dir)
    resumed = losses_by_step(workdir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step, losses in resumed.items():
        assert losses == [straight[step][0]] * len(losses), step
    ours, _, _ = restore_state(workdir)
    theirs, _, _ = restore_state(straight_dir)
    assert int(ours.step) == int(theirs.step) == STEPS
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(ours), jax.device_get(theirs))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, cli_env):
    workdir = tmp_path_factory.mktemp("straight")
    train_to_the_end(workdir, cli_env)
    return workdir


@pytest.mark.slow
def test_sigterm_saves_the_current_step_exits_0_and_the_same_command_resumes(
    killed_during_a_save,
):
    k = killed_during_a_save
    step, workdir = k["sigterm_step"], k["workdir"]
    assert k["sigterm_returncode"] == 0, k["sigterm_stderr"][-3000:]
    assert step is not None, k["sigterm_output"][-3000:]
    assert k["previous"] + CLI_OVERRIDES["checkpoint_every_steps"] <= step < STEPS
    assert (
        f"Stopped by SIGTERM after step {step}; saved {workdir}/checkpoints/{step}. "
        in (k["sigterm_output"])
    )
    assert "Test BLEU" not in k["sigterm_output"]
    assert str(step) in k["after_sigterm"]  # Saved synchronously: committed before exit 0.
    assert k["logged_after_sigterm"] == step  # The stopped step's loss is logged too.
    assert f"resuming from {workdir}/checkpoints/{step}." in k["final_output"]
    assert "Test BLEU" in k["final_output"]
    # That the losses and the final state equal the uninterrupted run's is checked below.


@pytest.mark.slow
def test_ctrl_c_saves_the_current_step_exits_0_and_the_same_command_resumes(
    straight_run, cli_env, tmp_path
):
    proc = start_training(tmp_path, cli_env, launcher=SIGINT_AS_IN_A_TERMINAL)
    wait_for(lambda: len(train_records(tmp_path)) >= 8, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    stopped = re.search(r"Stopped by SIGINT after step (\d+); saved (\S+)\. Run the same", out)
    assert stopped, out
    step = int(stopped[1])
    assert 8 <= step < STEPS and "Test BLEU" not in out
    assert stopped[2] == str(tmp_path / "checkpoints" / str(step))
    assert int(restore_state(tmp_path)[0].step) == step  # Saved synchronously, committed.
    assert max(losses_by_step(tmp_path)) == step

    out = train_to_the_end(tmp_path, cli_env)
    assert f"resuming from {tmp_path}/checkpoints/{step}." in out
    assert "Test BLEU" in out
    assert_same_run(tmp_path, straight_run)


@pytest.fixture
def default_sigint():
    """SIGINT raising KeyboardInterrupt, as in a foreground Python, whatever pytest inherited
    (a shell's background job starts with SIGINT ignored)."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def test_the_first_signal_asks_to_stop_and_a_second_acts_as_without_the_guard(default_sigint):
    handler, term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals(lambda step: False) as signals:
        assert not signals.should_stop(1)
        signal.raise_signal(signal.SIGTERM)  # Handled: the process goes on.
        assert signals.should_stop(2) and signals.reason() == "SIGTERM"
    assert signal.getsignal(signal.SIGINT) is handler
    assert signal.getsignal(signal.SIGTERM) is term
    with pytest.raises(KeyboardInterrupt), StopSignals(lambda step: False) as signals:
        signal.raise_signal(signal.SIGINT)  # Ctrl-C: a request ...
        assert signals.should_stop(1) and signals.reason() == "SIGINT"
        signal.raise_signal(signal.SIGINT)  # ... and Ctrl-C again: KeyboardInterrupt.
    assert signal.getsignal(signal.SIGINT) is handler


def test_a_signal_the_process_was_told_to_ignore_stays_ignored(default_sigint):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # As `nohup` or `cmd &` start a process.
    with StopSignals(lambda step: False) as signals:
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
        assert not signals.should_stop(1)
        signal.raise_signal(signal.SIGTERM)  # Not ignored: a stop request.
        assert signals.should_stop(2) and signals.reason() == "SIGTERM"
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def stop_during_a_save(proc, checkpoints) -> int:
    """Freezes `proc` (SIGSTOP) at a moment when a save after step 10 is written but not
    committed; returns that step. Frozen, the directory cannot change while we look."""
    while True:

        def partial():
            names = os.listdir(checkpoints) if checkpoints.exists() else []
            steps = [int(n[: -len(TMP_SUFFIX)]) for n in names if n.endswith(TMP_SUFFIX)]
            return max(steps, default=0) > 10 and max(steps)

        step = wait_for(partial, proc, poll=0.0002)
        proc.send_signal(signal.SIGSTOP)
        if (checkpoints / f"{step}{TMP_SUFFIX}").exists() and not (
            checkpoints / str(step)
        ).exists():
            return step
        proc.send_signal(signal.SIGCONT)  # Committed in between; wait for the next save.


def file_digests(directory):
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def committed(checkpoints):
    names = os.listdir(checkpoints) if checkpoints.exists() else []
    return sorted(int(n) for n in names if n.isdigit())


@pytest.fixture(scope="module")
def killed_during_a_save(tmp_path_factory, cli_env):
    """A run killed with SIGKILL while an async save was in flight; run again and stopped
    by SIGTERM once it has committed a checkpoint of its own; run again to the end."""
    workdir = tmp_path_factory.mktemp("killed")
    checkpoints = workdir / "checkpoints"
    proc = start_training(workdir, cli_env)
    partial = stop_during_a_save(proc, checkpoints)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    after_kill = sorted(os.listdir(checkpoints))
    previous = committed(checkpoints)[-1]
    restored, _, _ = restore_state(workdir, previous)

    proc = start_training(workdir, cli_env)
    wait_for(lambda: committed(checkpoints)[-1] > previous, proc)
    proc.send_signal(signal.SIGTERM)
    sigterm_output, sigterm_stderr = proc.communicate(timeout=300)
    stopped = re.search(r"Stopped by SIGTERM after step (\d+);", sigterm_output)
    after_sigterm = sorted(os.listdir(checkpoints))
    logged_after_sigterm = max(losses_by_step(workdir))

    final_output = train_to_the_end(workdir, cli_env)
    return dict(
        workdir=workdir,
        partial=partial,
        after_kill=after_kill,
        previous=previous,
        restored_step=int(restored.step),
        sigterm_returncode=proc.returncode,
        sigterm_stderr=sigterm_stderr,
        sigterm_step=int(stopped[1]) if stopped else None,
        sigterm_output=sigterm_output,
        after_sigterm=after_sigterm,
        logged_after_sigterm=logged_after_sigterm,
        final_output=final_output,
    )


def test_kill_9_during_an_async_save_keeps_the_previous_checkpoint_and_drops_the_partial(
    killed_during_a_save,
):
    k = killed_during_a_save
    partial, previous = k["partial"], k["previous"]
    assert f"{partial}{TMP_SUFFIX}" in k["after_kill"] and str(partial) not in k["after_kill"]
    assert previous == partial - CLI_OVERRIDES["checkpoint_every_steps"]
    assert k["restored_step"] == previous  # The newest committed checkpoint reads back whole.
    assert f"resuming from {k['workdir']}/checkpoints/{previous}." in k["sigterm_output"]
    names = os.listdir(k["workdir"] / "checkpoints")
    assert not [n for n in names if n.endswith(TMP_SUFFIX)]  # Cleaned by the next save.
    kept = sorted(int(n) for n in names)
    assert kept == [50, 55, 60]


def test_a_run_killed_stopped_and_restarted_matches_the_uninterrupted_run_bit_for_bit(
    killed_during_a_save, straight_run
):
    workdir = killed_during_a_save["workdir"]
    # Steps after the last commit were trained twice, before and after the kill: equal too.
    # Those after the SIGTERM stop, once: its checkpoint holds the very step it stopped at.
    twice = [s for s, losses in losses_by_step(workdir).items() if len(losses) == 2]
    assert twice and min(twice) == killed_during_a_save["previous"] + 1
    assert_same_run(workdir, straight_run)


TRAINED = {
    "num_train_steps": 20,
    "checkpoint_every_steps": 10,
    "keep_checkpoints": 5,
    "eval_every_steps": 0,
    "bleu_every_steps": 0,
    "num_samples_to_print": 0,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained in this process on 8 devices, mesh (data 8): checkpoints 10, 20."""
    workdir = tmp_path_factory.mktemp("trained")
    trainer.run(tiny_config(**TRAINED), str(workdir))
    return workdir


def test_a_step_with_a_nonfinite_loss_leaves_params_and_optimizer_state_unchanged(trained):
    state, setup, task = restore_state(trained, 20, MeshConfig(1, 1, 1), jax.devices()[:1])
    config = setup.config
    batches = task.train_batches(config.batch_size, config.seed)
    poisoned = dict(batches(20))
    poisoned["inputs"] = poisoned["inputs"].copy()
    # A token id past the vocabulary embeds as NaN (jnp.take fills out-of-range rows).
    poisoned["inputs"][0, 0] = config.model.vocab_size
    before = jax.device_get(state)
    with trainer.mesh_context(setup.mesh, config):
        state, metrics = setup.train_step(
            state, sharding.global_batch(poisoned, setup.batch_sharding)
        )
        skipped = jax.device_get((state, metrics))
        state, metrics = setup.train_step(
            state, sharding.global_batch(batches(21), setup.batch_sharding)
        )
        applied = jax.device_get((state, metrics))
    state, metrics = skipped
    assert not np.isfinite(metrics["loss_sum"]) and metrics["nonfinite"] == 1
    jax.tree.map(np.testing.assert_array_equal, state.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, state.opt_state, before.opt_state)
    assert (state.step, state.nonfinite_total, state.nonfinite_streak) == (21, 1, 1)
    state, metrics = applied  # The next good batch trains as usual, the streak is over.
    assert np.isfinite(metrics["loss_sum"]) and metrics["nonfinite"] == 0
    assert (state.step, state.nonfinite_total, state.nonfinite_streak) == (22, 1, 0)
    assert not np.array_equal(
        state.params["embed"]["embedding"], before.params["embed"]["embedding"]
    )


# Past float32's range the schedule gives lr = inf, so every update is Inf/NaN: a run that
# diverges, deterministically, from a good checkpoint.
DIVERGING = {"learning_rate_scale": 1e40}


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_stop_policy_ends_the_run_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    trained, tmp_path
):
    workdir = tmp_path / "w"
    shutil.copytree(trained, workdir)
    before = file_digests(workdir / "checkpoints")
    config = tiny_config(
        **{**TRAINED, **DIVERGING, "num_train_steps": 40, "max_consecutive_nonfinite": 3}
    )
    assert config.nonfinite_policy == "stop"
    with pytest.raises(
        NonFiniteError,
        match=r"Steps 21-23: 3 steps in a row had a NaN or Inf loss, gradient or update "
        r"\(3 such steps in all\).*max_consecutive_nonfinite=3",
    ):
        trainer.run(config, str(workdir))
    # Checked before the save of step 30: nothing new is written, nothing old is touched.
    assert file_digests(workdir / "checkpoints") == before
    assert max(r["step"] for r in train_records(workdir)) == 20


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_skip_policy_counts_the_skipped_steps_and_trains_on(trained, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(trained, workdir)
    config = tiny_config(**{**TRAINED, **DIVERGING, "num_train_steps": 30})
    config.nonfinite_policy = "skip"
    results = trainer.run(config, str(workdir))
    assert np.isfinite(results["loss"])
    last = train_records(workdir)[-1]
    assert (last["step"], last["skipped_steps"], last["skipped_steps_total"]) == (30, 10, 10)
    good, _, _ = restore_state(workdir, 20)
    after, _, _ = restore_state(workdir, 30)
    assert (int(after.step), int(after.nonfinite_total), int(after.nonfinite_streak)) == (
        30,
        10,
        10,
    )
    good, after = jax.device_get((good, after))
    jax.tree.map(np.testing.assert_array_equal, after.params, good.params)
    jax.tree.map(np.testing.assert_array_equal, after.opt_state, good.opt_state)


@pytest.mark.parametrize(
    "mesh_config, num_devices",
    [(MeshConfig(2, 4, 1), 8), (MeshConfig(1, 1, 1), 1)],
    ids=["data2-fsdp4", "one-device"],
)
def test_a_checkpoint_from_8_devices_restores_onto_another_mesh_with_the_same_loss(
    trained, mesh_config, num_devices
):
    def validation_loss(mesh, devices):
        state, setup, task = restore_state(trained, 20, mesh, devices)
        with trainer.mesh_context(setup.mesh, setup.config):
            return trainer.evaluate_loss(setup, state.params, task, "validation"), state

    saved_on, _ = validation_loss(MeshConfig(8, 1, 1), jax.devices())
    moved, state = validation_loss(mesh_config, jax.devices()[:num_devices])
    assert moved["loss"] == pytest.approx(saved_on["loss"], rel=1e-6)
    assert moved["accuracy"] == pytest.approx(saved_on["accuracy"], rel=1e-6)
    # Restored straight onto the target layout: d_model split over fsdp.
    kernel = state.params["encoder"]["layer_0"]["ffn"]["wi"]["kernel"]
    assert len(kernel.sharding.device_set) == num_devices
    assert kernel.addressable_shards[0].data.shape[0] == kernel.shape[0] // mesh_config.fsdp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two_hosts(workdir, env, num_train_steps):
    """train.py as processes 0 and 1 of one job, 4 CPU devices each."""
    env = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    port = free_port()
    flags = [f"--config.{k}={v}" for k, v in CLI_OVERRIDES.items()]
    flags += [f"--config.num_train_steps={num_train_steps}", "--num_processes=2",
              f"--coordinator_address=127.0.0.1:{port}"]  # fmt: skip
    command = [*SIGINT_AS_IN_A_TERMINAL, sys.executable, "train.py", "--config", "configs/tiny.py",
               "--workdir", str(workdir)]  # fmt: skip
    return [
        subprocess.Popen(
            [*command, *flags, f"--process_id={i}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, host", [(signal.SIGTERM, 1), (signal.SIGINT, 0)], ids=["SIGTERM", "SIGINT"]
)
def test_a_signal_to_one_host_stops_both_at_the_same_step(cli_env, tmp_path, signum, host):
    procs = start_two_hosts(tmp_path, cli_env, 2000)
    wait_for(lambda: len(train_records(tmp_path)) >= 8, procs[host])
    procs[host].send_signal(signum)
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    stops = [re.search(r"Stopped by .* after step (\d+); saved (\S+)\.", out) for out, _ in outputs]
    assert all(stops), outputs
    step = int(stops[0][1])  # JAX's preemption sync: the step every host reached.
    assert [int(s[1]) for s in stops] == [step, step] and 8 <= step < 2000
    assert sorted(int(n) for n in os.listdir(tmp_path / "checkpoints"))[-1] == step

    procs = start_two_hosts(tmp_path, cli_env, step + 4)
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert f"resuming from {tmp_path}/checkpoints/{step}." in out
    assert max(losses_by_step(tmp_path)) == step + 4
