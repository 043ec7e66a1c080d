"""Aligned local text files: `{directory}/{lang}.{split}.txt`, one sentence per line.

This is the layout of `../shared/data/multi30k`, and the way to train on your own corpus.
Problems with the files are reported by file and line before any training starts.
"""

from __future__ import annotations

import os

from absl import logging


class CorpusError(ValueError):
    """A corpus file is missing or malformed; the message names the file (and line)."""


def _read_lines(path: str) -> list[str]:
    """The lines of a UTF-8 file without their line endings; CorpusError naming the line of
    the first invalid byte sequence."""
    if not os.path.isfile(path):
        directory = os.path.dirname(path) or "."
        present = (
            sorted(f for f in os.listdir(directory) if f.endswith(".txt"))
            if os.path.isdir(directory)
            else []
        )
        raise CorpusError(
            f"{path} does not exist. Expected aligned files named {{lang}}.{{split}}.txt"
            + (f"; {directory} has: {', '.join(present)}." if present else ".")
        )
    with open(path, "rb") as f:
        raw = f.read().split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()  # The final newline ends the last line; it does not start another.
    lines = []
    for number, line in enumerate(raw, start=1):
        try:
            lines.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise CorpusError(
                f"{path}:{number}: invalid UTF-8 at byte {e.start} of the line ({line[:40]!r})."
            ) from None
    return lines


def read_parallel(
    directory: str, source_lang: str, target_lang: str, split: str
) -> list[tuple[str, str]]:
    """(source, target) sentence pairs of `split`, skipping (and counting) pairs with an
    empty side. Raises CorpusError for missing files, unequal line counts, invalid UTF-8 or a
    split with no usable pair."""
    source_path = os.path.join(directory, f"{source_lang}.{split}.txt")
    target_path = os.path.join(directory, f"{target_lang}.{split}.txt")
    sources, targets = _read_lines(source_path), _read_lines(target_path)
    if len(sources) != len(targets):
        raise CorpusError(
            f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}; "
            "the two files must be aligned line by line."
        )
    pairs, empty = [], []
    for number, (src, tgt) in enumerate(zip(sources, targets, strict=True), start=1):
        src, tgt = src.strip(), tgt.strip()
        if src and tgt:
            pairs.append((src, tgt))
        else:
            empty.append(number)
    if empty:
        logging.warning(
            "%s / %s: skipped %d pairs with an empty side (lines %s%s).",
            source_path, target_path, len(empty), ", ".join(map(str, empty[:5])),
            ", ..." if len(empty) > 5 else "",
        )  # fmt: skip
    if not pairs:
        raise CorpusError(f"{source_path} and {target_path} hold no non-empty sentence pair.")
    return pairs
