"""Soak: thousands of steps with checkpoints every 50, interrupted again and again by kill -9
and SIGTERM at random (seeded) moments, each time restarted with the same command, end with
the same final state and test score as a run that was never interrupted.

The model is the quickstart's with a quarter of its layers and width (1 + 1 layers, d_model
64), so that the two runs and a dozen restarts fit in minutes on a 2-core CPU.
"""

import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import quickstart
from transformer import sharding, trainer
from transformer.checkpoint import Checkpointer
from transformer.config import from_config_dict
from transformer.data.tasks import load_task
from transformer.workdir import checkpoint_meta

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 3000
INTERRUPTIONS = 12
OVERRIDES = {
    "num_train_steps": STEPS,
    "checkpoint_every_steps": 50,
    "log_every_steps": 50,
    "eval_every_steps": 0,
    "bleu_every_steps": 0,
    "num_samples_to_print": 0,
    "model.num_encoder_layers": 1,
    "model.num_decoder_layers": 1,
    "model.d_model": 64,
    "model.d_ff": 128,
    "model.num_heads": 2,
    "data.generated.num_validation": 100,
    "data.generated.num_test": 100,
}


def start(workdir, env):
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    return subprocess.Popen(
        [sys.executable, "train.py", "--config", "configs/quickstart.py", "--workdir",
         str(workdir), *flags],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def logged(workdir):
    path = workdir / "metrics.jsonl"
    return path.read_text().count('"split": "train"') if path.exists() else 0


def committed(workdir):
    path = workdir / "checkpoints"
    return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if path.exists() else []


def final_state(workdir):
    config = quickstart.get_config()
    for key, value in OVERRIDES.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    config = from_config_dict(config)
    task = load_task(config.data, str(workdir))
    config = config.with_vocab_size(task.tokenizer.vocab_size)
    setup = trainer.build(config, sharding.make_mesh(config.mesh))
    ckpt = Checkpointer(str(workdir / "checkpoints"), read_only=True)
    try:
        with trainer.mesh_context(setup.mesh, config):
            state = ckpt.restore(STEPS, setup.abstract_state, checkpoint_meta(config))
    finally:
        ckpt.close()
    return jax.device_get(state)


@pytest.mark.slow
def test_kills_and_restarts_end_with_the_uninterrupted_runs_final_state(tmp_path):
    env = {
        **os.environ,
        "XLA_FLAGS": "",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    straight_dir, workdir = tmp_path / "straight", tmp_path / "interrupted"
    straight = start(straight_dir, env)
    straight_out, err = straight.communicate(timeout=1800)
    assert straight.returncode == 0, err[-3000:]

    rng = random.Random(0)
    kinds = []
    while True:
        before = committed(workdir)
        records = logged(workdir)
        proc = start(workdir, env)
        if len(kinds) < INTERRUPTIONS:
            deadline = time.monotonic() + 600  # A guard against a hang, not a speed check.
            while logged(workdir) == records and proc.poll() is None:  # Training under way.
                if time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"No training step logged 600 s after a restart: {proc.args}")
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 3.0))
            kind = rng.choice([signal.SIGKILL, signal.SIGTERM])
            if proc.poll() is None:
                proc.send_signal(kind)
                kinds.append(kind)
        out, err = proc.communicate(timeout=1800)
        if before:
            assert f"resuming from {workdir}/checkpoints/{before[-1]}." in out, out
        if proc.returncode == -signal.SIGKILL:
            continue
        assert proc.returncode == 0, err[-3000:]
        stopped = re.search(r"Stopped by SIGTERM after step (\d+); saved", out)
        if stopped:
            assert committed(workdir)[-1] == int(stopped[1])
            continue
        break  # Trained to the end.

    assert set(kinds) == {signal.SIGTERM, signal.SIGKILL} and len(kinds) == INTERRUPTIONS
    # Same final state, bit for bit, and so the same test score.
    ours, theirs = final_state(workdir), final_state(straight_dir)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    score = re.compile(r"Test BLEU .*")
    assert score.search(out)[0] == score.search(straight_out)[0]
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
        steps = {r["step"] for r in map(json.loads, f) if r["split"] == "train"}
    assert max(steps) == STEPS
