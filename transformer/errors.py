"""Errors in what the user gave (config, corpus, workdir, flags), and the CLIs' way of ending
on one: the message alone, without a traceback, exit status 1.

Every module raises its own subclass of `UserError`; this module imports none of them.
"""

import logging as std_logging
import sys
import warnings
from collections.abc import Callable

from absl import app, flags, logging


class UserError(ValueError):
    """Something the user gave cannot be used as it is; the message says what and why."""


def cli_main(body: Callable[[], object]) -> Callable[[list[str]], None]:
    """An absl `main` running `body`: user errors end it with their message alone (exit 1)."""

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
        try:
            body()
        except (UserError, FileNotFoundError) as e:
            _quiet_abandoned_library_work()
            sys.exit(f"error: {e}")

    return main


def _quiet_abandoned_library_work() -> None:
    """A failed checkpoint read leaves Orbax's other read tasks unfinished; at exit asyncio
    reports each ("Task exception was never retrieved", "coroutine ... was never awaited")
    after our message, which should stay the last line a user reads."""
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
