"""Errors caused by the user's input (config, corpus, workdir): the CLIs print their message
alone, without a traceback, and exit non-zero."""

import logging as std_logging
import sys
import warnings
from collections.abc import Callable

from absl import app, flags, logging

from transformer.checkpoint import CheckpointError
from transformer.config import ConfigError
from transformer.data.tasks import VocabularyMismatchError
from transformer.data.text_files import CorpusError
from transformer.distributed import LaunchError
from transformer.inference import CheckpointNotFoundError
from transformer.nonfinite import NonFiniteError
from transformer.trainer import WorkdirError

USER_ERRORS = (
    ConfigError,
    CorpusError,
    CheckpointError,  # Another model's, unreadable, or not writable.
    LaunchError,
    CheckpointNotFoundError,
    VocabularyMismatchError,
    NonFiniteError,
    WorkdirError,
)


def cli_main(body: Callable[[], object]) -> Callable[[list[str]], None]:
    """An absl `main` running `body`: user errors end it with their message alone (exit 1)."""

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
        try:
            body()
        except (*USER_ERRORS, FileNotFoundError) as e:
            _quiet_abandoned_library_work()
            sys.exit(f"error: {e}")

    return main


def _quiet_abandoned_library_work() -> None:
    """A failed checkpoint read leaves Orbax's other read tasks unfinished; at exit asyncio
    reports each ("Task exception was never retrieved", "coroutine ... was never awaited")
    after our message, which should stay the last line a user reads."""
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
