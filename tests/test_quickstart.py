"""The README's main job, end to end: the quickstart trains to a high test BLEU."""

import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart_reaches_test_bleu_90(tmp_path):
    start = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config",
            "configs/quickstart.py",
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "XLA_FLAGS": ""},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    bleu = float(re.search(r"Test BLEU ([\d.]+)", out.stdout).group(1))
    print(f"quickstart: test BLEU {bleu:.2f} in {time.perf_counter() - start:.0f} s")
    assert bleu >= 90.0, out.stdout[-3000:]
