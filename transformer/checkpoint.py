"""Orbax checkpoints of the train state plus the model description they belong to.

Saves are asynchronous (the device-to-host copy blocks, the write does not) and atomic: Orbax
writes `<step>.orbax-checkpoint-tmp` and renames it on commit, so a crash or a full disk
mid-save leaves the earlier checkpoints intact and the partial directory is never listed (it is
removed by the next save). Every checkpoint carries a checksum of its arrays, so damaged files
are reported on restore instead of silently giving wrong values, and restoring the newest
checkpoint falls back to the newest one that reads.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from transformer.config import differences
from transformer.errors import UserError

CHECKSUM_KEY = "state_checksum"  # Stored in the JSON meta item next to the model description.


class CheckpointError(UserError):
    """A checkpoint cannot be used as asked; the message names it and what to do."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint was written for a different model than the one being restored."""


class CheckpointReadError(CheckpointError):
    """A checkpoint's files cannot be read back as they were written."""

    def __init__(self, message: str, short: str):
        super().__init__(message)
        self.short = short  # The first sentence: which checkpoint, and why.


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (full disk, lost permissions); earlier ones are intact."""


class Checkpointer:
    """Saves every `every_steps` steps (and on `force`), keeps the newest `keep`."""

    def __init__(self, directory: str, every_steps: int = 1, keep: int = 1, read_only=False):
        if read_only:
            options = ocp.CheckpointManagerOptions(
                save_interval_steps=0, read_only=True, create=False
            )
        else:
            options = ocp.CheckpointManagerOptions(
                save_decision_policy=checkpoint_managers.FixedIntervalPolicy(every_steps),
                preservation_policy=checkpoint_managers.LatestN(keep),
                enable_async_checkpointing=True,
                cleanup_tmp_directories=True,
            )
        self.directory = os.path.abspath(directory)
        # Orbax warns that a read-only directory is read-only; evaluation always asks for that.
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR if read_only else level)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        finally:
            absl_logger.setLevel(level)
        self._writing: int | None = None  # The step of the save that may still be running.

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` without force would write (the interval policy)."""
        return self._manager.should_save(step)

    def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = False) -> bool:
        """Starts an async save of `state` (a pytree) with JSON `meta`; True if one started.
        CheckpointWriteError if this or the previous save cannot be written."""
        if not force and not self.should_save(step):
            return False
        checksum = int(jax.device_get(checksum_of(state)))
        self.wait_until_finished()  # Orbax would too; here a failure names its own step.
        self._writing = step
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    meta=ocp.args.JsonSave({**meta, CHECKSUM_KEY: checksum}),
                ),
                force=True,
            )
        except Exception as e:
            raise self._write_error(e) from e
        return True

    def reached_preemption(self, step: int) -> bool:
        """Whether every host has reached the step at which a preemption notice (SIGTERM to
        any host, through jax.distributed's preemption service) stops them all."""
        return self._manager.reached_preemption(step)

    def restore(self, step: int, abstract_state: Any, expected_meta: dict[str, Any]) -> Any:
        """Restores step `step` onto the shardings of `abstract_state` (a tree of
        jax.ShapeDtypeStruct), after checking its meta matches `expected_meta`.

        Raises CheckpointMismatchError for another model's checkpoint and CheckpointReadError
        for files that cannot be read or do not match their checksum; nothing is deleted.
        """
        _silence_reads_completing_into_a_closed_loop()
        _silence_unretrieved_read_errors()
        try:
            meta = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )["meta"]
        except Exception as e:
            raise self._read_error(step, e) from e
        saved_checksum = meta.pop(CHECKSUM_KEY, None)
        check_meta(meta, expected_meta, self.step_path(step))
        try:
            state = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )["state"]
        except Exception as e:
            raise self._read_error(step, e) from e
        if saved_checksum is not None and int(checksum_of(state)) != saved_checksum:
            raise self._read_error(step, "its arrays do not match the checksum saved with them")
        return state

    def restore_newest(
        self, abstract_state: Any, expected_meta: dict[str, Any], set_aside: bool = False
    ) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that reads (as `restore`), or None where
        there is none.

        A damaged one is named in a warning and skipped: left in place, or with `set_aside`
        (for training, which will write past its step) moved to `<directory>.damaged/`.
        Raises CheckpointReadError if no checkpoint reads; another model's is an error too."""
        damaged: list[int] = []
        for step in reversed(self.all_steps()):
            try:
                state = self.restore(step, abstract_state, expected_meta)
            except CheckpointReadError as e:
                print(f"warning: {e.short} Trying the checkpoint before it.", file=sys.stderr)
                damaged.append(step)
                continue
            if damaged:
                self._report_damaged(damaged, step, set_aside)
            return step, state
        if damaged:
            raise CheckpointReadError(
                f"No checkpoint in {self.directory} can be read ({damaged}); nothing was "
                "deleted. Move the directory aside to start over.",
                short="",
            )
        return None

    def _report_damaged(self, damaged: list[int], used: int, set_aside: bool) -> None:
        names = ", ".join(str(s) for s in damaged)
        where = "left where they are"
        if set_aside:
            aside = self.directory + ".damaged"
            if jax.process_index() == 0:
                os.makedirs(aside, exist_ok=True)
                for step in damaged:
                    os.replace(self.step_path(step), os.path.join(aside, str(step)))
            multihost_utils.sync_global_devices("transformer: damaged checkpoints set aside")
            self._manager.reload()
            where = f"moved to {aside}"
        print(f"warning: checkpoint(s) {names} of {self.directory} cannot be read ({where}); "
              f"using step {used}, the newest that can.", file=sys.stderr)  # fmt: skip

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def wait_until_finished(self) -> None:
        """Blocks until the running save is committed; CheckpointWriteError if it failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._write_error(e) from e
        self._writing = None

    def close(self) -> None:
        self._manager.close()

    def _write_error(self, cause: Exception) -> CheckpointWriteError:
        step, self._writing = self._writing, None
        kept = [s for s in self.all_steps() if s != step]
        resume = f"step {kept[-1]}" if kept else "the start"
        return CheckpointWriteError(
            f"Writing checkpoint {self.directory}/{step} failed: {_first_line(cause)}. Is the "
            f"disk full, or the directory no longer writable? The checkpoints written before it "
            f"({kept}) are untouched; the partial {step}.orbax-checkpoint-tmp is removed by the "
            f"next save. Free space, then run the same command again to resume from {resume}."
        )

    def _read_error(self, step: int, cause: Exception | str) -> CheckpointReadError:
        short = f"Checkpoint {self.step_path(step)} cannot be read: {_first_line(cause)}."
        return CheckpointReadError(
            f"{short} Its files may be damaged (a crash or a full disk while they were copied) "
            "or written by another version of this code. Nothing was deleted; --step chooses "
            "another checkpoint.",
            short=short,
        )


def _silence_reads_completing_into_a_closed_loop() -> None:
    """When a restore fails, the reads still in flight finish on TensorStore's threads and try
    to wake Orbax's event loop, which the failure already closed; each would print an "Event
    loop is closed" traceback around the error message, a screen of noise for a damaged
    checkpoint. Installed before a restore starts, since the first of them can come before the
    error reaches us. Only that exact error is dropped; every other goes to the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop_wakeups", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
            previous(unraisable)

    hook._drops_closed_loop_wakeups = True
    sys.unraisablehook = hook


class _UnretrievedReadError(logging.Filter):
    """Drops asyncio's "Future exception was never retrieved" for a TensorStore read."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (
            record.getMessage().partition("\n")[0].endswith("exception was never retrieved")
            and "tensorstore_spec" in str(exc)
        )


def _silence_unretrieved_read_errors() -> None:
    """A failed restore abandons the reads of the other arrays; when one of them fails too
    and is garbage-collected, asyncio logs its error and traceback, possibly long after our
    warning. That exact report is dropped; asyncio's other messages pass."""
    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _UnretrievedReadError) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_UnretrievedReadError())


# What a full or read-only disk says, so the message names it wherever the library put it.
_OS_ERRORS = tuple(
    os.strerror(code)
    for code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO)
)


def _first_line(cause: Exception | str, limit: int = 400) -> str:
    """An error's first line, its middle cut if long (TensorStore's messages run to pages of
    spec), and then any OS error ("File too large", "No space left on device") that the error
    or its causes hold but the cut text lost."""
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if isinstance(cause, Exception):
        text = f"{type(cause).__name__}: {text}"
    half = limit // 2
    short = text if len(text) <= limit else f"{text[:half]} ... {text[-half:]}"
    everything, seen = str(cause), cause
    for _ in range(8):  # The chain of causes, bounded.
        seen = (seen.__cause__ or seen.__context__) if isinstance(seen, BaseException) else None
        if seen is None:
            break
        everything += "\n" + str(seen)
    lost = [e for e in _OS_ERRORS if e in everything and e not in short]
    return short + (f" [{'; '.join(lost)}]" if lost else "")


@jax.jit
def checksum_of(tree: Any) -> jax.Array:
    """A uint32 checksum of all leaves' bits: each element's bits weighted by an odd function
    of its flat index, summed modulo 2**32, so that any single flipped bit changes it and the
    mesh that holds the arrays does not (integer sums are exact in any order)."""
    checksum = jnp.uint32(0)
    for i, leaf in enumerate(jax.tree.leaves(tree)):
        checksum += _leaf_checksum(jnp.asarray(leaf)) * jnp.uint32(2 * i + 1)
    return checksum


def _leaf_checksum(x: jax.Array) -> jax.Array:
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    else:
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
        bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    for dim in range(x.ndim):
        index = index * jnp.uint32(x.shape[dim]) + jax.lax.broadcasted_iota(
            jnp.uint32, x.shape, dim
        )
    weight = (index * jnp.uint32(2) + jnp.uint32(1)) * jnp.uint32(2654435761)
    return jnp.sum(bits * weight, dtype=jnp.uint32)


def check_meta(saved: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    """Raises CheckpointMismatchError listing every key of `expected` whose value differs
    (keys that only `saved` has, from settings since removed, do not count)."""
    diffs = differences(_restricted(saved, expected), expected)
    if diffs:
        raise CheckpointMismatchError(
            f"The checkpoint at {where} belongs to a different model (checkpoint -> now):\n  "
            + "\n  ".join(diffs)
            + "\nUse a new --workdir, or the config that wrote this one."
        )


def _restricted(saved: Any, expected: Any) -> Any:
    """`saved` with only the (nested) keys that `expected` has."""
    if not (isinstance(saved, dict) and isinstance(expected, dict)):
        return saved
    return {k: _restricted(saved.get(k), v) for k, v in expected.items()}
