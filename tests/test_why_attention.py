"""benchmarks/why_attention.py: its gradient read-out and its command line."""

import subprocess
import sys

import jax
import numpy as np
import pytest
import sacrebleu

from benchmarks.gradient_paths import by_distance, embedding_gradient_norms
from transformer.model import build_model

from .model_configs import small_model_config
from .test_decode import init, random_sources
from .test_train import REPO


@pytest.mark.parametrize("kind", ["encoder_decoder", "rnn"])
def test_gradients_reach_only_the_inputs_an_output_depends_on(kind):
    # Untied: the table is then read by the lookups alone, as the direct check below needs.
    model = build_model(small_model_config(kind=kind, vocab_size=12, tie_output_embedding=False))
    inputs = random_sources(12, [6], seed=4)
    targets = random_sources(12, [9], seed=5)
    params = init(model, inputs, targets)["params"]
    norms = jax.jit(lambda p, x, y: embedding_gradient_norms(model, p, x, y))
    to_source, to_target = (np.asarray(a) for a in norms(params, inputs, targets))
    assert to_source.shape == (9, 6) and to_target.shape == (9, 9)
    # Decoder input i (the token before target i) reaches losses t >= i only: causal.
    assert np.all(to_target[np.triu_indices(9, k=1)] == 0.0)
    assert np.all(to_target[np.tril_indices(9)] > 0.0)
    assert np.all(to_source > 0.0)  # Every output reads the whole source.
    # The same figure as differentiating the loss by the looked-up vector directly.
    t, i = 5, 2
    table = params["embed"]["embedding"]
    token = int(np.asarray(inputs)[0, i])

    def loss_t(row):
        changed = jax.tree.map(lambda x: x, params)
        changed["embed"]["embedding"] = table.at[token].set(row)
        logp = jax.nn.log_softmax(model.apply({"params": changed}, inputs, targets)[0])
        return -logp[t, int(np.asarray(targets)[0, t])]

    # The token appears once among the inputs the loss reads, so its row's gradient is its.
    assert (np.asarray(inputs)[0] == token).sum() == 1
    assert token not in np.asarray(targets)[0, :t]
    direct = np.linalg.norm(jax.jit(jax.grad(loss_t))(table[token]))
    np.testing.assert_allclose(to_source[t, i], direct, rtol=1e-4)


def test_gradients_are_grouped_by_distance():
    model = build_model(small_model_config(kind="rnn", vocab_size=12))
    pairs = [
        (np.asarray([5, 6, 7, 1]), np.asarray([8, 9, 1])),
        (np.asarray([4, 1]), np.asarray([6, 1])),
    ]
    params = init(model, np.ones((1, 4), np.int32), np.ones((1, 4), np.int32))["params"]
    grouped = by_distance(model, params, pairs, width=6)
    # Target side: t - i over 3 + 2 positions; source side: |j - a_t| over 3 x 4 + 2 x 2.
    assert {d: len(v) for d, v in grouped["target"].items()} == {0: 5, 1: 3, 2: 1}
    assert sum(len(v) for v in grouped["source"].values()) == 3 * 4 + 2 * 2


def test_the_command_line_builds_both_models_without_compiling():
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/why_attention.py"), "--check"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "transformer: 5,992,448 parameters" in run.stdout
    assert "rnn: 5,842,560 parameters" in run.stdout


def test_bad_lengths_are_a_usage_error():
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/why_attention.py"), "--check", "--tokens=64",
         "--lengths=16,128"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2 and "--tokens must be at least" in run.stderr


def test_bleu_by_length_scores_each_bucket_as_corpus_bleu(tmp_path):
    from benchmarks.bleu_by_length import scores_by_bucket

    words = "ein Hund läuft über die grüne Wiese nahe dem alten Haus am Fluss".split()  # noqa: SIM905
    sources = [" ".join(["w"] * n) for n in range(1, 13)]  # 1 to 12 source words.
    references = [" ".join(words[: n + 3]) for n in range(1, 13)]
    perfect = list(references)
    short_only = [
        r if len(s.split()) <= 6 else "der Mann" for s, r in zip(sources, references, strict=True)
    ]
    rows = scores_by_bucket(sources, references, {"a": perfect, "b": short_only}, buckets=2)
    assert [(r["system"], r["words"], r["sentences"]) for r in rows] == [
        ("a", "1-6", 6), ("b", "1-6", 6), ("a", "7-12", 6), ("b", "7-12", 6),
    ]  # fmt: skip
    assert rows[0]["bleu"] == rows[1]["bleu"] == rows[2]["bleu"] == 100.0
    want = sacrebleu.corpus_bleu(short_only[6:], [references[6:]]).score
    assert rows[3]["bleu"] == round(want, 2) and want < 10


def test_bleu_by_length_command_writes_its_table_and_refuses_unequal_files(tmp_path):
    for name, lines in {
        "src": ["a b", "a b c d"],
        "ref": ["x y", "x y z"],
        "hyp": ["x y", "x"],
    }.items():
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    script = str(REPO / "benchmarks/bleu_by_length.py")
    args = [sys.executable, script, "--sources", str(tmp_path / "src"), "--references",
            str(tmp_path / "ref"), "--buckets", "2", "--out", str(tmp_path / "out")]  # fmt: skip
    run = subprocess.run(
        [*args, "--hypotheses", f"m={tmp_path / 'hyp'}"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "bleu_by_length.png").is_file()
    assert (
        (tmp_path / "out" / "bleu_by_length.csv")
        .read_text()
        .startswith("system,words,sentences,bleu")
    )
    (tmp_path / "short").write_text("x y\n", encoding="utf-8")
    run = subprocess.run(
        [*args, "--hypotheses", f"m={tmp_path / 'short'}"], capture_output=True, text=True
    )
    assert run.returncode == 1 and "they must match" in run.stderr
