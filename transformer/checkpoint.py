"""Orbax checkpoints of the train state plus the model description they belong to.

Saves are asynchronous (the device-to-host copy blocks, the write does not) and atomic: Orbax
writes into a temporary directory and renames it on commit, so a crash mid-save leaves the
previous checkpoints intact.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from transformer.config import differences


class CheckpointMismatchError(ValueError):
    """A checkpoint was written for a different model than the one being restored."""


class Checkpointer:
    """Saves every `every_steps` steps (and on `force`), keeps the newest `keep`."""

    def __init__(self, directory: str, every_steps: int = 1, keep: int = 1, read_only=False):
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=checkpoint_managers.FixedIntervalPolicy(every_steps),
            preservation_policy=checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=True,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = False) -> bool:
        """Starts an async save of `state` (a pytree) with JSON `meta`; True if one started."""
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def restore(self, step: int, abstract_state: Any, expected_meta: dict[str, Any]) -> Any:
        """Restores step `step` onto the shardings of `abstract_state` (a tree of
        jax.ShapeDtypeStruct), after checking its meta matches `expected_meta`."""
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        check_meta(meta["meta"], expected_meta, f"{self.directory}/{step}")
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored["state"]

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def check_meta(saved: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Raises CheckpointMismatchError listing every key whose value differs."""
    diffs = differences(saved, expected)
    if diffs:
        raise CheckpointMismatchError(
            f"The checkpoint at {where} belongs to a different model (checkpoint -> now):\n  "
            + "\n  ".join(diffs)
            + "\nUse a new --workdir, or the config that wrote this one."
        )
