"""The sweep runner end to end: real training, evaluation, results files, and resuming."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import sacrebleu

from configs import ablations
from transformer import inference, sweep, trainer
from transformer.config import with_overrides
from transformer.data.tasks import load_task
from transformer.evaluation import translate_split
from transformer.workdir import WorkdirError

REPO = pathlib.Path(__file__).resolve().parent.parent

# configs/tiny.py's sizes: its corpus and recipe (data=tiny), base scaled to d_model 32
# (scale 1/16: d_ff 128, 8 heads of 4), one layer each side, 10 steps; validation is the
# sweep's own, so the trainer's periodic evaluation is off.
SCALE = 0.0625
TINY = [
    "model.num_encoder_layers=1",
    "model.num_decoder_layers=1",
    "eval_every_steps=0",
    "bleu_every_steps=0",
    "num_samples_to_print=0",
]


def tiny_variants(names, steps, overrides=()):
    variants = []
    for name in names:
        config = with_overrides(
            ablations.get_config(f"{name},data=tiny,scale={SCALE}"),
            [*TINY, f"num_train_steps={steps}", *overrides],
        )
        paper = ablations.PAPER[name]
        variants.append(
            sweep.Variant(
                name, config, ablations.describe(name, config),
                paper.params_millions, paper.ppl, paper.bleu,
            )
        )  # fmt: skip
    return variants


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def train_records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["split"] == "train"]


def snapshot(workdir):
    """Everything training writes: the metrics log and the checkpoint steps."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        metrics = f.read()
    return metrics, sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def greedy_bleu(workdir, split):
    """sacreBLEU, computed here, of the greedy translations of `split` by the newest
    checkpoint in `workdir`, against the split's references."""
    restored = inference.restore(str(workdir))
    task = load_task(restored.config.data, str(workdir))
    placed = restored.placed
    with trainer.mesh_context(placed.mesh, restored.config):
        hypotheses = translate_split(
            restored.config, placed.model, restored.params, task, split, placed.batch_sharding
        )
    return sacrebleu.corpus_bleu(hypotheses, [list(task.splits[split].references)]).score


def run_cli(workdir, *flags):
    """sweep.py in a subprocess on one CPU device (cheaper to compile for than the tests' 8)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, "sweep.py", f"--workdir={workdir}", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_sweep_cli_tabulates_each_variant_and_a_second_run_trains_nothing(tmp_path):
    flags = [
        "--variants=base,A_h4", "--data=tiny", f"--scale={SCALE}",
        *(f"--config.{o}" for o in [*TINY, "num_train_steps=10"]),
    ]  # fmt: skip
    first = run_cli(tmp_path, *flags)
    assert first.returncode == 0, first.stderr

    table = read_csv(tmp_path / "results.csv")
    assert [r["variant"] for r in table] == ["base", "A_h4"]
    assert table[1]["change"] == "num_heads=4, d_k=8, d_v=8"
    for r in table:
        assert int(r["steps"]) == 10 and int(r["params"]) > 10_000
        assert float(r["dev_ppl"]) > 1.0
        expected = greedy_bleu(tmp_path / r["variant"], "validation")
        assert float(r["dev_bleu"]) == pytest.approx(expected, abs=1e-9)
    # Row A keeps h * d_k = d_model: the same parameter count as base.
    assert table[0]["params"] == table[1]["params"]
    assert (table[0]["paper_ppl"], table[0]["paper_bleu"]) == ("4.92", "25.8")
    markdown = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Table 3 variants (data tiny, scale 0.0625, ")
    assert "| variant | change | params (M) | steps | dev PPL | dev BLEU |" in markdown
    assert "| A_h4 | num_heads=4, d_k=8, d_v=8 | " in markdown
    assert "| 65 | 5.00 | 25.5 |" in markdown
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # One vocabulary for the corpus, trained once, in both variants.
    (shared,) = (tmp_path / "vocabularies").glob("*/vocab.txt")
    assert first.stdout.count("Training the vocabulary") == 1
    for name in ("base", "A_h4"):
        assert (tmp_path / name / "vocab.txt").read_bytes() == shared.read_bytes()

    before = {name: snapshot(tmp_path / name) for name in ("base", "A_h4")}
    second = run_cli(tmp_path, *flags)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("not retrained") == 2
    assert {name: snapshot(tmp_path / name) for name in ("base", "A_h4")} == before
    assert read_csv(tmp_path / "results.csv") == table

    # The same workdir with another model is refused before anything trains.
    (wider,) = tiny_variants(["base"], steps=10)
    wider.config.model.d_ff = 256
    with pytest.raises(WorkdirError, match="different model or data settings"):
        sweep.run_sweep([wider], str(tmp_path), "tiny sweep")


@pytest.mark.slow
def test_half_trained_variant_resumes_from_its_checkpoint(tmp_path, capsys):
    sweep.run_sweep(tiny_variants(["base"], steps=10), str(tmp_path), "tiny sweep")
    assert read_csv(tmp_path / "results.csv")[0]["steps"] == "10"

    # More steps: the recorded result is stale; training continues from checkpoint 10.
    capsys.readouterr()
    rows = sweep.run_sweep(tiny_variants(["base"], steps=20), str(tmp_path), "tiny sweep")
    assert "resuming from" in capsys.readouterr().out
    steps = [r["step"] for r in train_records(tmp_path / "base")]
    assert steps == sorted(steps) and steps[-1] == 20 and len(steps) == len(set(steps))
    assert rows[0]["steps"] == "20" and read_csv(tmp_path / "results.csv") == rows


@pytest.mark.slow
def test_finished_variant_without_a_recorded_result_is_only_evaluated(tmp_path, capsys):
    # Trained long enough (200 steps at 0.3 of the tiny recipe's learning rate) to translate
    # some words right, so that BLEU tells one split's translations from another's.
    (variant,) = tiny_variants(["base"], steps=200, overrides=["learning_rate_scale=0.3"])
    trainer.run(variant.config, str(tmp_path / "base"))
    before = snapshot(tmp_path / "base")
    capsys.readouterr()
    (row,) = sweep.run_sweep([variant], str(tmp_path), "tiny sweep")
    assert "trained to step 200; evaluating" in capsys.readouterr().out
    assert snapshot(tmp_path / "base") == before
    assert row["steps"] == "200" and float(row["dev_ppl"]) > 1.0
    # dev_bleu: greedy sacreBLEU of the validation split, not of the test split.
    validation, test = (greedy_bleu(tmp_path / "base", s) for s in ("validation", "test"))
    assert float(row["dev_bleu"]) == pytest.approx(validation, abs=1e-9)
    assert validation > 1.0 and abs(validation - test) > 0.01


def test_cli_names_a_bad_override_and_writes_nothing(tmp_path):
    result = run_cli(tmp_path / "w", "--variants=C", "--data=tiny", "--config.model.num_layers=2")
    assert result.returncode == 1
    assert "unknown config key 'model.num_layers'" in result.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_sigterm_stops_the_sweep_at_a_checkpoint_without_recording_the_variant(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    flags = [
        "--variants=base,A_h4", "--data=tiny", f"--scale={SCALE}",
        *(f"--config.{o}" for o in [*TINY, "num_train_steps=100000"]),
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "sweep.py", f"--workdir={tmp_path}", *flags],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = tmp_path / "base" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text(encoding="utf-8")):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "Sweep stopped during base" in out
    assert read_csv(tmp_path / "results.csv") == []
    assert not (tmp_path / "A_h4").exists()
    assert os.listdir(tmp_path / "base" / "checkpoints")  # The trainer saved where it stopped.
