"""Profiling chosen train steps: a trace TensorBoard and Perfetto read, with named steps."""

import gzip
import json

import pytest

from transformer import trainer

from .model_configs import tiny_config


@pytest.mark.slow
def test_the_chosen_steps_are_traced_with_their_numbers_evaluation_and_saves(tmp_path):
    config = tiny_config(num_train_steps=20, profile_skip_steps=17, profile_num_steps=3)
    trainer.run(config, str(tmp_path))
    (run,) = (tmp_path / "tensorboard" / "plugins" / "profile").iterdir()
    assert list(run.glob("*.xplane.pb"))  # TensorBoard's profile plugin reads this one.
    with gzip.open(run / "perfetto_trace.json.gz") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    steps = [int(e["args"]["step_num"]) for e in events if e.get("name") == "train"]
    assert sorted(steps) == [18, 19, 20]
    names = {e.get("name") for e in events}
    assert {"evaluate", "checkpoint_save"} <= names  # Step 20 saves and evaluates.
    assert any("train_step" in (n or "") for n in names)  # The jitted step itself.
