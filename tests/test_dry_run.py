"""train.py --dry_run: the state's size per device and XLA's memory for the configured mesh,
from a compiled step, with nothing written."""

import re
import subprocess
import sys

import pytest

from transformer.config import from_config_dict
from transformer.dry_run import largest_batch

from .model_configs import abstract_parameter_count, tiny_config
from .test_train import REPO
from .xla_flags import one_device_env

# Megabytes of parameters, so that sizes in MiB show how they are split.
WIDER = {"model.d_model": 256, "model.d_ff": 1024}


def dry_run(workdir, *overrides, env=None):
    return subprocess.run(
        [sys.executable, "train.py", "--config", "configs/tiny.py", "--workdir", str(workdir),
         "--dry_run", *[f"--config.{k}={v}" for k, v in WIDER.items()], *overrides],
        capture_output=True, text=True, cwd=REPO, timeout=600, env=env,
    )  # fmt: skip


def mib(text, label):
    return float(re.search(rf"{label} ([\d.]+) MiB", text).group(1))


@pytest.mark.slow
def test_dry_run_reports_sizes_and_memory_and_writes_nothing(tmp_path):
    one = dry_run(tmp_path / "one", env=one_device_env())
    assert one.returncode == 0, one.stderr[-3000:]
    count = abstract_parameter_count(tiny_config(**WIDER), tiny_config().data.vocab_size)
    assert f"{count:,} parameters" in one.stdout
    # One device holds everything: 4 bytes a parameter, Adam's two moments twice that.
    assert mib(one.stdout, "parameters") == pytest.approx(4 * count / 2**20, abs=0.05)
    assert mib(one.stdout, "optimizer state") == pytest.approx(8 * count / 2**20, abs=0.05)
    assert re.search(r"XLA memory per device: arguments .* temporaries .* at once", one.stdout)
    sharded = dry_run(tmp_path / "sharded", "--config.mesh.data=2", "--config.mesh.fsdp=2",
                      "--config.mesh.tensor=2")  # fmt: skip
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "Mesh {'data': 2, 'fsdp': 2, 'tensor': 2} of 8 cpu devices" in sharded.stdout
    assert mib(sharded.stdout, "parameters") < mib(one.stdout, "parameters") / 2
    assert not (tmp_path / "one").exists() and not (tmp_path / "sharded").exists()


def test_the_largest_batch_has_the_longest_rows_in_whole_shards():
    tokens = from_config_dict(tiny_config(**{"data.batching": "tokens", "batch_size": 200}))
    batch = largest_batch(tokens, rows_multiple=4)
    # 200 tokens // 24 = 8 rows of the longest length, a multiple of the 4 shards.
    assert {k: v.shape for k, v in batch.items()} == {"inputs": (8, 24), "targets": (8, 24)}
    real = tiny_config(**{"data.batching": "tokens", "batch_size": 200})
    real.data.token_count = "real"
    batch = largest_batch(from_config_dict(real), rows_multiple=4)
    # Counting real tokens, a batch may hold 1.5x the budget in padding: 200 // 16 = 12 rows.
    assert batch["targets"].shape == (12, 24)
    packed = largest_batch(from_config_dict(tiny_config()), rows_multiple=8)
    assert set(packed) == {f"{side}{part}" for side in ("inputs", "targets")
                           for part in ("", "_positions", "_segmentation")}  # fmt: skip
    assert packed["targets"].shape == (32, 24)
