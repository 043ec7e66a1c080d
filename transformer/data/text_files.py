"""Aligned local text files: `{directory}/{lang}.{split}.txt`, one sentence per line.

This is the layout of `../shared/data/multi30k`, and the way to train on your own corpus.
Problems with the files are reported by file and line before any training starts.
"""

from __future__ import annotations

import os

from absl import logging

from transformer.errors import UserError


class CorpusError(UserError):
    """A corpus file is missing or malformed; the message names the file (and line)."""


def _read_lines(path: str, shard_index: int, shard_count: int) -> tuple[int, list[str | None]]:
    """(number of lines, the lines): line i (from 0) is decoded only when
    i % shard_count == shard_index, the others are None. CorpusError naming the line of the
    first invalid byte sequence in this shard."""
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
    lines: list[str | None] = [None] * len(raw)
    for i in range(shard_index, len(raw), shard_count):
        try:
            lines[i] = raw[i].decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise CorpusError(
                f"{path}:{i + 1}: invalid UTF-8 at byte {e.start} of the line ({raw[i][:40]!r})."
            ) from None
    return len(raw), lines


def read_parallel(
    directory: str,
    source_lang: str,
    target_lang: str,
    split: str,
    shard_index: int = 0,
    shard_count: int = 1,
) -> list[tuple[str, str]]:
    """(source, target) sentence pairs of `split`, skipping (and counting) pairs with an
    empty side. With shard_count > 1 only lines i with i % shard_count == shard_index are
    decoded and kept: one host's share of a corpus. Raises CorpusError for missing files,
    unequal line counts, invalid UTF-8 or a split (shard) with no usable pair."""
    source_path = os.path.join(directory, f"{source_lang}.{split}.txt")
    target_path = os.path.join(directory, f"{target_lang}.{split}.txt")
    num_sources, sources = _read_lines(source_path, shard_index, shard_count)
    num_targets, targets = _read_lines(target_path, shard_index, shard_count)
    if num_sources != num_targets:
        raise CorpusError(
            f"{source_path} has {num_sources} lines but {target_path} has {num_targets}; "
            "the two files must be aligned line by line."
        )
    pairs, empty = [], []
    for i in range(shard_index, num_sources, shard_count):
        src, tgt = sources[i].strip(), targets[i].strip()
        if src and tgt:
            pairs.append((src, tgt))
        else:
            empty.append(i + 1)
    if empty:
        logging.warning(
            "%s / %s: skipped %d pairs with an empty side (lines %s%s).",
            source_path, target_path, len(empty), ", ".join(map(str, empty[:5])),
            ", ..." if len(empty) > 5 else "",
        )  # fmt: skip
    if not pairs:
        shard = f" (lines i % {shard_count} == {shard_index})" if shard_count > 1 else ""
        raise CorpusError(
            f"{source_path} and {target_path} hold no non-empty sentence pair{shard}."
        )
    return pairs
