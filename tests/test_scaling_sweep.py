"""benchmarks/scaling_sweep.py: one timed point per grid entry, written as a CSV and a plot."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    *("--config.model.d_model=32", "--config.model.num_heads=2", "--config.model.d_ff=64"),
    *("--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1"),
]


def run_sweep(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": ""}  # One CPU device, as the benchmark runs.
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scaling_sweep.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_the_sweep_writes_a_csv_row_per_point_and_a_plot(tmp_path):
    grid = ["--lengths", "64,128,256", "--tokens", "512", "--batches", "2,4", "--length", "8"]
    done = run_sweep(*TINY, *grid, "--steps", "2", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "scaling.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    shapes = [(r["sweep"], int(r["rows"]), int(r["length"])) for r in rows]
    assert shapes == [
        ("length", 8, 64),
        ("length", 4, 128),
        ("length", 2, 256),
        ("batch", 2, 8),
        ("batch", 4, 8),
    ]
    lengths = rows[:3]
    assert {int(r["tokens"]) for r in lengths} == {512}  # Fixed tokens: only attention grows.
    attention = [float(r["attention_gflop_per_step"]) for r in lengths]
    total = [float(r["gflop_per_step"]) for r in lengths]
    assert attention[0] < attention[1] < attention[2]
    assert total[2] - total[0] == pytest.approx(attention[2] - attention[0], abs=0.02)
    for r in rows:
        seconds, tokens = float(r["step_seconds"]), int(r["tokens"])
        assert seconds > 0
        assert float(r["target_tokens_per_second"]) == pytest.approx(tokens / seconds, rel=1e-2)
    image = matplotlib.image.imread(tmp_path / "scaling.png")
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert "Wrote" in done.stdout and "Other processes' CPU time" in done.stdout


def test_a_length_longer_than_the_token_budget_is_refused(tmp_path):
    done = run_sweep("--lengths", "64", "--tokens", "32", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "--tokens must be at least the longest of --lengths" in done.stderr
    assert not list(tmp_path.iterdir())


def test_a_bad_override_is_refused_before_anything_is_written(tmp_path):
    done = run_sweep("--config.model.layers=2", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "unknown config key 'model.layers'" in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
