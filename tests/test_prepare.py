"""prepare.py: a corpus's vocabulary made once and used by runs instead of their own."""

import subprocess
import sys

import pytest

from transformer import trainer
from transformer.config import ConfigError

from .model_configs import tiny_config
from .test_train import REPO


def test_prepared_vocabulary_is_the_one_every_run_uses(tmp_path):
    vocabulary = tmp_path / "shared" / "tiny_vocab.txt"
    out = subprocess.run(
        [sys.executable, "prepare.py", "--config", "configs/tiny.py", "--vocabulary",
         str(vocabulary)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"--config.data.vocabulary={vocabulary}" in out.stdout
    config = tiny_config(**{"num_train_steps": 2, "data.vocabulary": str(vocabulary)})
    trainer.run(config, str(tmp_path / "run"))
    assert (tmp_path / "run" / "vocab.txt").read_bytes() == vocabulary.read_bytes()


def test_a_missing_prepared_vocabulary_is_named(tmp_path):
    config = tiny_config(**{"data.vocabulary": str(tmp_path / "nope.txt")})
    with pytest.raises(
        ConfigError, match=r"data\.vocabulary=.*nope\.txt' does not exist.*prepare\.py"
    ):
        trainer.run(config, str(tmp_path / "work"))
