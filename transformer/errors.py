"""Errors caused by the user's input (config, corpus, workdir): the CLIs print their message
alone, without a traceback, and exit non-zero."""

import sys
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
            sys.exit(f"error: {e}")

    return main
