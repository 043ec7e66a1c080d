"""Two real processes joined by jax.distributed (4 CPU devices each) train on their own data
shards, checkpoint, resume, and match one process training on the same global batches."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from transformer import checkpoint, sharding, trainer
from transformer.config import from_config_dict
from transformer.data.tasks import load_task
from transformer.workdir import checkpoint_meta

REPO = pathlib.Path(__file__).resolve().parent.parent
OVERRIDES = {
    "checkpoint_every_steps": 3,
    "log_every_steps": 1,
    "eval_every_steps": 0,
    "bleu_every_steps": 0,
    "num_samples_to_print": 0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_two_processes(workdir, num_train_steps):
    """Runs train.py as processes 0 and 1 of one job; returns their outputs."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "train.py",
                "--config",
                "configs/tiny.py",
                "--workdir",
                workdir,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                f"--config.num_train_steps={num_train_steps}",
                *flags,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
    return outputs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("multihost"))
    first = train_two_processes(workdir, 6)
    resumed = train_two_processes(workdir, 8)
    return workdir, first, resumed


@pytest.mark.slow  # Two training runs of two processes: ~80 s on 2 cores.
def test_two_processes_checkpoint_and_resume_together(two_process_run):
    workdir, first, resumed = two_process_run
    assert all("from scratch" in out for out in first)
    assert all(f"resuming from {workdir}/checkpoints/6" in out for out in resumed)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["6", "8"]


@pytest.mark.slow  # Two training runs of two processes: ~80 s on 2 cores.
def test_two_processes_match_one_process_on_the_same_global_batches(two_process_run):
    workdir = two_process_run[0]
    config_dict = tiny.get_config()
    config_dict.update(OVERRIDES)
    config = from_config_dict(config_dict)
    # The hosts' shards, as each of the two processes read them.
    hosts = [load_task(config.data, workdir, i, 2) for i in range(2)]
    config = config.with_vocab_size(hosts[0].tokenizer.vocab_size)
    mesh = sharding.make_mesh(config.mesh)
    setup = trainer.build(config, mesh)
    shards = sharding.batch_shards(mesh, config.logical_axis_rules)
    batches = [h.train_batches(config.batch_size, config.seed, shards) for h in hosts]
    losses = []
    with trainer.mesh_context(mesh, config):
        state = setup.init(jax.random.key(config.seed))
        for step in range(8):
            rows = [b(step) for b in batches]  # host 0's rows first, as on the mesh
            batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
            state, m = setup.train_step(state, sharding.global_batch(batch, setup.batch_sharding))
            losses.append(float(m["loss_sum"] / m["tokens"]))
        ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
        restored = ckpt.restore(8, setup.abstract_state, checkpoint_meta(config))
        ckpt.close()
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        logged = {r["step"]: r["loss"] for r in map(json.loads, f) if r["split"] == "train"}
    np.testing.assert_allclose([logged[s] for s in range(1, 9)], losses, rtol=1e-5)
    for ours, theirs in zip(
        jax.tree.leaves(jax.device_get(state.params)),
        jax.tree.leaves(jax.device_get(restored.params)),
        strict=True,
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


WORKER = """
import json, sys
import jax
from configs import tiny
from transformer import distributed
from transformer.config import from_config_dict
from transformer.data.tasks import load_task

distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
config = tiny.get_config()
config.data.batching = "tokens"
task = load_task(from_config_dict(config).data, sys.argv[3])
batches = task.train_batches(256, 0, row_multiple=8)
print(json.dumps([list(batches(step)["inputs"].shape) for step in range(40)]))
"""


def test_token_batches_of_real_processes_agree_on_every_steps_shape(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, address, str(i), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    shapes = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert shapes[0] == shapes[1]
    assert len({length for _, length in shapes[0]}) > 1  # several buckets, same order
    assert all(rows * 2 * length <= 256 for rows, length in shapes[0])  # half of each batch
