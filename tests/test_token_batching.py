"""Token-budget batching (data.batching = "tokens", the default of configs/multi30k.py and
wmt14.py) trained end to end by train.py (`trainer.run`) on a local text corpus: one compile per
batch shape, several shapes, and a stopped and resumed run that logs the straight run's
losses bit for bit."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from configs import multi30k
from transformer.config import from_config_dict
from transformer.data.generated import generate_splits
from transformer.data.pipeline import bucket_lengths
from transformer.data.tasks import load_task

from .model_configs import with_overrides
from .xla_flags import FAST_COMPILE

# Two training processes (about a minute): the slow run. The batching itself is tested
# step by step in tests/test_pipeline.py.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 24
STOP = 12  # The first leg of the interrupted run ends here, with a checkpoint.
# 200 BPE pieces on the generated corpus: pairs of 9 to ~60 pieces, of which those of at most
# 24 are kept. At 192 tokens per step the 16- and 24-token buckets fill batches (12 and 8
# rows); the shorter buckets hold too few pairs for a batch of their own.
OVERRIDES = {
    "num_train_steps": STEPS,
    "batch_size": 192,
    "warmup_steps": 20,
    "learning_rate_scale": 1.0,
    "log_every_steps": 1,  # Every step's loss in metrics.jsonl.
    "checkpoint_every_steps": STOP,
    "eval_every_steps": 0,
    "bleu_every_steps": 0,
    "num_samples_to_print": 0,
    "eval_batch_size": 16,
    "model.num_encoder_layers": 1,
    "model.num_decoder_layers": 1,
    "model.d_model": 32,
    "model.d_ff": 64,
    "model.num_heads": 2,
    "data.vocab_size": 200,
    "data.max_length": 24,
}
COMPILED = re.compile(r"Compiled the train step for batches of (\d+) x (\d+) tokens")


def write_corpus(directory):
    """Aligned {en,de}.{train,validation,test}.txt of the generated corpus."""
    for split, pairs in generate_splits(0, 600, 16, 16).items():
        for side, lang in enumerate(("en", "de")):
            text = "".join(pair[side] + "\n" for pair in pairs)
            (directory / f"{lang}.{split}.txt").write_text(text, encoding="utf-8")


def train(corpus, workdir, env, **overrides):
    """train.py --config configs/multi30k.py on `corpus` with OVERRIDES: its output and the
    (rows, length) of each train-step compile it announced."""
    flags = {**OVERRIDES, "data.text_files.directory": corpus, **overrides}
    out = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/multi30k.py", "--workdir", str(workdir),
         *(f"--config.{k}={v}" for k, v in flags.items())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, [(int(r), int(n)) for r, n in COMPILED.findall(out.stdout)]


def train_losses(workdir):
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A straight run of STEPS, and one stopped at its checkpoint of STOP and resumed, each on
    one CPU device; the three share a compilation cache (the executables are the same)."""
    env = {
        **os.environ,
        "XLA_FLAGS": FAST_COMPILE,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    corpus = tmp_path_factory.mktemp("corpus")
    write_corpus(corpus)
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    straight_out, straight_compiles = train(corpus, straight, env)
    _, first_leg = train(corpus, resumed, env, num_train_steps=STOP)
    second_out, second_leg = train(corpus, resumed, env)
    # The shapes of the batches, computed apart from the loop: the task's step-indexed
    # batches, all rows on the one device.
    config = from_config_dict(
        with_overrides(
            multi30k.get_config(), {**OVERRIDES, "data.text_files.directory": str(corpus)}
        )
    )
    task = load_task(config.data, str(straight))
    batches = task.train_batches(config.batch_size, config.seed, row_multiple=1)
    return dict(
        straight=straight,
        resumed=resumed,
        outputs=[straight_out, second_out],
        compiles=[straight_compiles, first_leg, second_leg],
        shapes=[batches(step)["targets"].shape for step in range(STEPS)],
    )


def test_token_batches_come_in_several_bucket_shapes_each_compiled_once(runs):
    shapes = runs["shapes"]
    assert len(set(shapes)) >= 2
    assert all(length in bucket_lengths(24) for _, length in shapes)
    straight, first_leg, second_leg = runs["compiles"]
    # Once per distinct shape, in the order the shapes first occur.
    assert straight == list(dict.fromkeys(shapes))
    assert first_leg == list(dict.fromkeys(shapes[:STOP]))
    assert second_leg == list(dict.fromkeys(shapes[STOP:]))
    assert "Test BLEU" in runs["outputs"][0]


def test_a_token_batched_run_stopped_at_a_checkpoint_and_resumed_logs_the_same_losses(runs):
    assert f"resuming from {runs['resumed']}/checkpoints/{STOP}." in runs["outputs"][1]
    straight, resumed = train_losses(runs["straight"]), train_losses(runs["resumed"])
    assert sorted(straight) == sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == straight  # Bit for bit: the same batches, dropout keys and updates.
    assert len(set(straight.values())) == STEPS  # Losses that differ from step to step.
