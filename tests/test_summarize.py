"""A tiny summariser trained end to end by train.py on multi-line dialogues in JSON files made
here (configs/samsum.py, scaled down): its printed ROUGE against rouge-score run here on the
hypotheses evaluate.py writes, and summarize.py restoring its checkpoint for JSON, JSON Lines,
a text file and stdin, with bad input refused before anything is written."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from rouge_score import rouge_scorer

from transformer import rouge

from .xla_flags import one_device_env

REPO = pathlib.Path(__file__).resolve().parent.parent
NAMES = ("Ann", "Bob", "Cat", "Dan", "Eve", "Fay")
ITEMS = ("apples", "bread", "tickets", "flowers", "coffee", "a cake")
TIMES = ("at 5", "tomorrow", "on Monday", "tonight")
OVERRIDES = {
    "num_train_steps": 60, "batch_size": 32, "warmup_steps": 20, "learning_rate_scale": 2.0,
    "log_every_steps": 20, "eval_every_steps": 60, "bleu_every_steps": 60,
    "checkpoint_every_steps": 30, "num_samples_to_print": 1, "eval_batch_size": 16,
    "model.num_encoder_layers": 1, "model.num_decoder_layers": 1, "model.d_model": 32,
    "model.d_ff": 64, "model.num_heads": 2, "data.vocab_size": 120,
    "data.max_source_length": 48, "data.max_length": 16,
    # One compiled shape; (source, target) token buckets are test_pipeline's.
    "data.batching": "sentences",
}  # fmt: skip


def dialogue(rng) -> tuple[str, str]:
    """A chat of three to six turns and its one-sentence summary."""
    a, b = rng.choice(NAMES, 2, replace=False)
    item, when = rng.choice(ITEMS), rng.choice(TIMES)
    turns = [f"{a}: Hi {b}! Can you buy {item}?", f"{b}: Sure, {when}."]
    turns += [f"{a}: Thanks!", f"{b}: No problem :)"][: rng.integers(0, 3)]
    return "\n".join(turns), f"{b} will buy {item} for {a} {when}."


def write_corpus(directory: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    for split, count, suffix in (
        ("train", 600, ".json"),
        ("val", 24, ".jsonl"),
        ("test", 24, ".json"),
    ):
        records = [
            dict(zip(("dialogue", "summary"), dialogue(rng), strict=True)) for _ in range(count)
        ]
        path = directory / f"{split}{suffix}"
        if suffix == ".json":
            path.write_text(json.dumps(records), encoding="utf-8")
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def run(script, *args, stdin=None):
    return subprocess.run(
        [sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
        input=stdin, env=one_device_env(),
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    corpus, workdir = tmp_path_factory.mktemp("dialogues"), tmp_path_factory.mktemp("summariser")
    write_corpus(corpus)
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    out = run("train.py", "--config", "configs/samsum.py", "--workdir", str(workdir), *flags,
              f"--config.data.json_files.directory={corpus}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return corpus, workdir, out.stdout


def test_training_prints_and_logs_the_rouge_of_its_summaries(trained):
    corpus, workdir, stdout = trained
    printed = re.search(r"Test ROUGE-1/2/L/Lsum ([\d.]+) / ([\d.]+) / ([\d.]+) / ([\d.]+) "
                        r"\(rouge-score F1, stemmed, greedy\)", stdout)  # fmt: skip
    assert printed, stdout[-2000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    validation = [r for r in records if r["split"] == "validation" and "rouge1" in r]
    assert [r["step"] for r in validation] == [60]
    # evaluate.py decodes the same checkpoint greedily; rouge-score, run here, scores it.
    out = run("evaluate.py", "--workdir", str(workdir), "--beam_size", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    path = workdir / "summaries" / "test-step60-beam1.txt"
    hypotheses = path.read_text(encoding="utf-8").splitlines()
    references = [r["summary"] for r in json.loads((corpus / "test.json").read_text())]
    scorer = rouge_scorer.RougeScorer(list(rouge.ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(r, h) for r, h in zip(references, hypotheses, strict=True)]
    want = [100 * np.mean([s[name].fmeasure for s in scores]) for name in rouge.ROUGE_TYPES]
    assert [float(x) for x in printed.groups()] == pytest.approx(want, abs=0.006)
    assert want[0] > 30  # The names, items and times are copied from the dialogue.
    assert f"ROUGE-1/2/L/Lsum {want[0]:.2f}" in out.stdout and "stemmer: Porter" in out.stdout


# Beam 4 with every control of the search: evaluate.py and summarize.py must agree on all.
SEARCH = ("--alpha", "1.0", "--min_length", "3", "--no_repeat_ngram", "2")


def evaluated_summaries(workdir) -> str:
    """evaluate.py's validation summaries with SEARCH, as written to the workdir."""
    out = run("evaluate.py", "--workdir", str(workdir), "--split", "validation", *SEARCH)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "beam 4, alpha 1.0, at least 3 pieces, no 2-gram twice" in out.stdout
    return (workdir / "summaries" / "validation-step60-beam4-alpha1-min3-norepeat2.txt").read_text()


def test_summarize_restores_the_checkpoint_as_evaluate_py_decodes(trained, tmp_path):
    corpus, workdir, _ = trained
    options = SEARCH
    want = evaluated_summaries(workdir)
    output = tmp_path / "summaries.txt"
    out = run("summarize.py", "--workdir", str(workdir), "--input", str(corpus / "val.jsonl"),
              "--output", str(output), *options)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert output.read_text() == want  # The same search: evaluate.py's hypotheses.


@pytest.mark.slow
def test_summarize_reads_a_text_file_stdin_and_another_field(trained, tmp_path):
    corpus, workdir, _ = trained
    options, want = SEARCH, evaluated_summaries(workdir)
    first = json.loads((corpus / "val.jsonl").read_text().splitlines()[0])["dialogue"]
    (tmp_path / "chat.txt").write_text(first + "\n")
    for args, stdin in (((("--input", str(tmp_path / "chat.txt"))), None), ((), first)):
        out = run("summarize.py", "--workdir", str(workdir), *options, *args, stdin=stdin)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout == want.splitlines(keepends=True)[0]
    (tmp_path / "records.json").write_text(json.dumps([{"text": first}]))
    out = run("summarize.py", "--workdir", str(workdir), *options, "--field", "text",
              "--input", str(tmp_path / "records.json"))  # fmt: skip
    assert out.stdout == want.splitlines(keepends=True)[0]


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "bad.json",
            '[{"dialogue": "A: hi"}, {"text": "B: yo"}]',
            r"bad.json: record 1 has no field 'dialogue'",
        ),
        ("bad.jsonl", '{"dialogue": "A: hi"}\n{"dialogue": ', r"bad.jsonl:2: invalid JSON"),
        ("bad.json", '[{"dialogue": "  "}]', r"bad.json: record\(s\) 0 have an empty 'dialogue'"),
        ("empty.txt", "\n \n", r"empty.txt is empty: nothing to summarise"),
    ],
)
def test_bad_input_is_named_and_nothing_is_written(trained, tmp_path, name, content, message):
    _, workdir, _ = trained
    (tmp_path / name).write_text(content)
    output = tmp_path / "out.txt"
    out = run("summarize.py", "--workdir", str(workdir), "--input", str(tmp_path / name),
              "--output", str(output))  # fmt: skip
    assert out.returncode != 0 and re.search(message, out.stderr), out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not output.exists()
    assert sorted(os.listdir(tmp_path)) == [name]


def test_the_gpu_recipe_builds_on_cpu_without_compiling():
    """configs/samsum.py:gpu, the paper's base size in bfloat16 with fused attention, checked
    here as benchmarks/gpu.sh checks its runs: config, model and FLOPs, nothing compiled."""
    out = run("benchmarks/train_step.py", "--config", "configs/samsum.py:gpu", "--check")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "6 + 6 layers, d_model 512" in out.stdout and "batch 64 x (512, 128)" in out.stdout
    assert "dtype=bfloat16" in out.stdout and "attention=dot_product_attention" in out.stdout
