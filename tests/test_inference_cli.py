"""evaluate.py, translate.py and average_checkpoints.py on a real trained workdir."""

import os
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import tiny
from transformer import inference, trainer
from transformer.attention_maps import attention_weights
from transformer.data.tasks import load_task
from transformer.decode import greedy_decode_lm
from transformer.evaluation import continue_prompts
from transformer.model import Transformer

from .model_configs import small_model_config

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on 8 devices (the CLIs below run on 1): checkpoints 20, 30, 40."""
    workdir = tmp_path_factory.mktemp("trained")
    config = tiny.get_config()
    config.checkpoint_every_steps = 10
    config.keep_checkpoints = 3
    results = trainer.run(config, str(workdir))
    return workdir, results


def run(script, *args, stdin=None):
    return subprocess.run(
        [sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
        input=stdin, env={**os.environ, "XLA_FLAGS": ""},
    )  # fmt: skip


def bleu_of(stdout):
    return float(re.search(r"BLEU ([\d.]+)", stdout).group(1))


def test_greedy_evaluation_reproduces_the_training_runs_test_bleu(trained):
    workdir, results = trained
    out = run("evaluate.py", "--workdir", str(workdir), "--beam_size", "1")
    assert out.returncode == 0, out.stderr
    assert bleu_of(out.stdout) == pytest.approx(results["bleu"], abs=0.01)
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in out.stdout
    hyps = (workdir / "translations" / "test-step40-beam1.txt").read_text().splitlines()
    assert len(hyps) == 64


@pytest.mark.slow
def test_averaging_in_memory_and_as_a_written_checkpoint_agree(trained):
    workdir, _ = trained
    before = sorted(os.listdir(workdir / "checkpoints"))
    avg = run("evaluate.py", "--workdir", str(workdir), "--average_last", "3", "--beam_size", "1")
    assert avg.returncode == 0, avg.stderr
    assert "average of steps 20, 30, 40" in avg.stdout
    out = run("average_checkpoints.py", "--workdir", str(workdir), "--last", "3")
    assert out.returncode == 0, out.stderr
    assert os.listdir(workdir / "averaged") == ["40"]
    written = run("evaluate.py", "--workdir", str(workdir), "--checkpoint_dir",
                  str(workdir / "averaged"), "--beam_size", "1")  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert bleu_of(written.stdout) == bleu_of(avg.stdout)
    # Each went to its own file, neither over the plain step 40's.
    names = set(os.listdir(workdir / "translations"))
    assert {"test-step40-avg3-beam1.txt", "test-step40-averaged-beam1.txt"} <= names
    again = run("average_checkpoints.py", "--workdir", str(workdir), "--last", "3")
    assert again.returncode != 0 and "exists already" in again.stderr
    assert sorted(os.listdir(workdir / "checkpoints")) == before


def test_beam_search_evaluation_runs_with_the_papers_settings(trained):
    workdir, _ = trained
    out = run("evaluate.py", "--workdir", str(workdir), "--split", "validation")
    assert out.returncode == 0, out.stderr
    assert (workdir / "translations" / "validation-step40-beam4-alpha0.6.txt").exists()
    assert "beam 4, alpha 0.6" in out.stdout and 0.0 <= bleu_of(out.stdout) <= 100.0


def test_translate_reads_stdin_and_reports_empty_and_overlong_lines(trained):
    workdir, _ = trained
    long_line = " ".join(["the man sees the dog ,"] * 10)
    text = f"the man sees the dog.\n\n{long_line}\nthe woman opens the door.\n"
    out = run("translate.py", "--workdir", str(workdir), "--beam_size", "2", stdin=text)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert len(lines) == 5 and lines[1] == "" and lines[4] == ""
    assert "line 2 is empty" in out.stderr and "line 3 has 61 tokens" in out.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--step", "7"], r"has no step 7; it has \[20, 30, 40\]"),
        (["--average_last", "4"], r"Averaging the last 4 checkpoints .* needs that many"),
        (["--alpha", "nan"], r"--alpha must be >= 0"),
    ],
)
def test_bad_requests_are_clear_errors(trained, args, message):
    workdir, _ = trained
    out = run("evaluate.py", "--workdir", str(workdir), "--beam_size", "1", *args)
    assert out.returncode != 0 and re.search(message, out.stderr), out.stderr
    assert "Traceback" not in out.stderr


def test_workdirs_without_checkpoints_or_config_are_clear_errors(tmp_path, trained):
    out = run("evaluate.py", "--workdir", str(tmp_path))
    assert out.returncode != 0 and "is not a trained workdir" in out.stderr
    workdir, _ = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("config.json", "vocab.txt"):
        (empty / name).write_bytes((workdir / name).read_bytes())
    out = run("translate.py", "--workdir", str(empty), stdin="the man sleeps.\n")
    assert out.returncode != 0 and "does not exist; train first" in out.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the man sleeps.\nthe \xff dog.\n")
    out = run("translate.py", "--workdir", str(workdir), "--input", str(bad))
    assert out.returncode != 0 and "bad.txt:2: invalid UTF-8" in out.stderr


def test_attention_maps_are_drawn_for_every_layer_and_kind(trained, tmp_path):
    workdir, _ = trained
    out = run("attention_maps.py", "--workdir", str(workdir), "--source", "the man sleeps.",
              "--target", "der Mann schläft.", "--output_dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [
        "decoder_cross_attention_layer_0.png",
        "decoder_self_attention_layer_0.png",
        "encoder_self_attention_layer_0.png",
    ]
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_attention_weights_are_distributions_over_the_right_tokens():
    model = Transformer(small_model_config(num_heads=2))
    src, tgt = np.array([[5, 6, 7, 1]]), np.array([[8, 9, 1]])
    params = nn.meta.unbox(model.init(jax.random.key(0), src, tgt))["params"]
    weights = attention_weights(model, params, src, tgt)
    assert weights["encoder/layer_1/self_attention"].shape == (2, 4, 4)
    assert weights["decoder/layer_0/cross_attention"].shape == (2, 3, 4)
    causal = weights["decoder/layer_0/self_attention"]
    np.testing.assert_allclose(causal.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(causal[0], k=1) == 0)  # nothing from the future


@pytest.fixture(scope="module")
def language_model(tmp_path_factory):
    """A tiny decoder-only model trained on the generated task's German side."""
    workdir = tmp_path_factory.mktemp("lm")
    config = tiny.get_config()
    config.model.kind = "decoder_only"
    config.model.num_encoder_layers = 0
    config.bleu_every_steps = 0
    trainer.run(config, str(workdir))
    return workdir


def test_generate_greedy_continues_prompts_as_the_library_decodes(language_model):
    restored = inference.restore(str(language_model))
    max_length = restored.config.data.max_length
    prompts = ["der Mann", ""]
    out = run("generate.py", "--workdir", str(language_model), "--temperature", "0",
              "--prompt", prompts[0], "--prompt", prompts[1])  # fmt: skip
    assert out.returncode == 0, out.stderr
    ids = [seq[:-1] for seq in restored.tokenizer.encode_batch(prompts)]
    rows = np.zeros((2, max(len(i) for i in ids)), np.int32)
    for row, seq in zip(rows, ids, strict=True):
        row[: len(seq)] = seq
    expected = greedy_decode_lm(restored.placed.model, restored.params, rows, max_length)
    assert out.stdout.splitlines() == [restored.tokenizer.decode(e) for e in np.asarray(expected)]
    assert out.stdout.startswith("der Mann ")


@pytest.mark.slow
def test_generate_samples_are_reproducible_by_seed_and_vary_between_rows(language_model):
    args = ["--workdir", str(language_model), "--num_samples", "4", "--temperature", "1.5",
            "--top_p", "0.95", "--top_k", "50", "--seed", "3"]  # fmt: skip
    first = run("generate.py", *args, stdin="der Mann\n")
    again = run("generate.py", *args, stdin="der Mann\n")
    assert first.returncode == 0, first.stderr
    samples = first.stdout.splitlines()
    assert samples == again.stdout.splitlines() and len(samples) == 4
    assert all(s.startswith("der Mann") for s in samples) and len(set(samples)) > 1


@pytest.mark.slow
def test_generate_and_translate_refuse_the_other_kind_of_model(trained, language_model):
    out = run("generate.py", "--workdir", str(trained[0]), "--prompt", "der Mann")
    assert out.returncode != 0 and "generate.py needs a language model" in out.stderr
    out = run("translate.py", "--workdir", str(language_model), stdin="the man sleeps.\n")
    assert out.returncode != 0 and "translate.py needs a translator" in out.stderr
    out = run("generate.py", "--workdir", str(language_model), "--prompt", "der Mann " * 40)
    assert out.returncode != 0 and re.search(r"Prompt 1 has \d+ pieces", out.stderr)
    assert "Traceback" not in out.stderr
    out = run("generate.py", "--workdir", str(language_model), "--temperature", "inf")
    assert out.returncode != 0 and "--temperature must be finite and >= 0" in out.stderr


def test_sample_continuations_stop_at_the_end_of_a_short_split(language_model):
    restored = inference.restore(str(language_model))
    task = load_task(restored.config.data, str(language_model))
    sentences = len(task.splits["test"])
    samples = continue_prompts(
        restored.config, restored.placed.model, restored.params, task, "test", sentences + 3
    )
    assert len(samples) == sentences
