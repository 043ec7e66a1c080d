"""Errors caused by the user's input (config, corpus, workdir): the CLIs print their message
alone, without a traceback, and exit non-zero."""

from transformer.checkpoint import CheckpointMismatchError
from transformer.config import ConfigError
from transformer.data.tasks import VocabularyMismatchError
from transformer.data.text_files import CorpusError
from transformer.inference import CheckpointNotFoundError

USER_ERRORS = (
    ConfigError,
    CorpusError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    VocabularyMismatchError,
)
