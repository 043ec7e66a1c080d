"""Records in local JSON files: `{directory}/{split}.json` (one JSON list of objects) or
`{split}.jsonl` (JSON Lines, one object per line), read in place.

This is the layout of `../shared/data/samsum` (records `{"id", "dialogue", "summary"}`),
whose sources span several lines and so cannot live one per line in a text file; it serves
translation corpora kept as JSON Lines as well. Each record gives a source and a target by
field name. Problems are reported by file and record index (from 0) before training starts.
"""

from __future__ import annotations

import json
import os

from absl import logging

from transformer.data.text_files import CorpusError

FORMATS = (".json", ".jsonl")


def split_path(directory: str, split: str) -> str:
    """The one file of `split` in `directory`: `{split}.json` or `{split}.jsonl`."""
    found = [os.path.join(directory, split + ext) for ext in FORMATS]
    found = [p for p in found if os.path.isfile(p)]
    if len(found) > 1:
        raise CorpusError(f"Both {' and '.join(found)} exist; keep one file per split.")
    if not found:
        present = sorted(
            f for f in (os.listdir(directory) if os.path.isdir(directory) else [])
            if f.endswith(FORMATS)
        )  # fmt: skip
        raise CorpusError(
            f"{os.path.join(directory, split)}.json(l) does not exist"
            + (f"; {directory} has: {', '.join(present)}." if present else ".")
        )
    return found[0]


def read_records(path: str) -> list:
    """The records of a .json file (a JSON list) or a .jsonl file (one value per non-blank
    line). CorpusError naming the file (and line) for invalid UTF-8 or JSON."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CorpusError(f"{path}:{line}: invalid UTF-8 at byte {e.start} of the file.") from None
    if path.endswith(".jsonl"):
        records = []
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                records.append(_parse(line, f"{path}:{number}"))
        return records
    records = _parse(text, path)
    if not isinstance(records, list):
        raise CorpusError(f"{path} holds a JSON {type(records).__name__}, not a list of records.")
    return records


def _parse(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"{where}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})."
        raise CorpusError(where) from None


def field_text(record, field: str, path: str, index: int) -> str:
    """`record[field]`, stripped; CorpusError naming the file and record index when the
    record is not an object, lacks the field or holds something other than a string."""
    if not isinstance(record, dict):
        raise CorpusError(
            f"{path}: record {index} is a JSON {type(record).__name__}, not an object."
        )
    if field not in record:
        raise CorpusError(
            f"{path}: record {index} has no field {field!r} (it has {sorted(record)})."
        )
    if not isinstance(record[field], str):
        raise CorpusError(
            f"{path}: record {index} field {field!r} is a JSON {type(record[field]).__name__}, "
            "not a string."
        )
    return record[field].strip()


def read_pairs(
    directory: str,
    source_field: str,
    target_field: str,
    split: str,
    shard_index: int = 0,
    shard_count: int = 1,
) -> list[tuple[str, str]]:
    """(source, target) of the records of `split`, skipping (and counting) records with an
    empty side; only records i with i % shard_count == shard_index (one host's share).
    Newlines inside a field are kept (a dialogue's turns). Raises CorpusError naming the
    file and record for a record that is not an object, lacks a field or holds a non-string."""
    path = split_path(directory, split)
    records = read_records(path)
    pairs, empty = [], []
    for i in range(shard_index, len(records), shard_count):
        source = field_text(records[i], source_field, path, i)
        target = field_text(records[i], target_field, path, i)
        if source and target:
            pairs.append((source, target))
        else:
            empty.append(i)
    if empty:
        logging.warning(
            "%s: skipped %d records with an empty %s or %s (records %s%s).",
            path, len(empty), source_field, target_field, ", ".join(map(str, empty[:5])),
            ", ..." if len(empty) > 5 else "",
        )  # fmt: skip
    if not pairs:
        shard = f" (records i % {shard_count} == {shard_index})" if shard_count > 1 else ""
        raise CorpusError(f"{path} holds no record with a non-empty {source_field} and "
                          f"{target_field}{shard}.")  # fmt: skip
    return pairs
