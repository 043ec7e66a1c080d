"""The JSON / JSON Lines source (transformer.data.json_files) on small files made here: what it
reads, and every malformed file or record named by file and record."""

import json
import logging
from pathlib import Path

import pytest

from transformer.data import json_files
from transformer.data.text_files import CorpusError

SAMSUM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "samsum"
DIALOGUE = "Ann: Lunch today?\r\nBob: Sure, at 1.\nAnn: See you!"
RECORDS = [
    {"id": "a", "dialogue": DIALOGUE, "summary": "Ann and Bob meet for lunch at 1."},
    {"id": "b", "dialogue": "Cat: I'm late.\nDan: OK", "summary": "Cat is late."},
    {"id": "c", "dialogue": "Eve: Done!", "summary": " Eve is done. "},
]


def write_json(directory, name, records):
    path = directory / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def write_jsonl(directory, name, records):
    path = directory / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read(directory, split="train", **shard):
    return json_files.read_pairs(str(directory), "dialogue", "summary", split, **shard)


@pytest.mark.parametrize("writer, name", [(write_json, "train.json"), (write_jsonl, "train.jsonl")])
def test_both_formats_give_the_fields_of_every_record_in_order(tmp_path, writer, name):
    writer(tmp_path, name, RECORDS)
    assert read(tmp_path) == [
        (DIALOGUE, "Ann and Bob meet for lunch at 1."),
        ("Cat: I'm late.\nDan: OK", "Cat is late."),
        ("Eve: Done!", "Eve is done."),  # Stripped at the ends, newlines inside kept.
    ]


def test_jsonl_skips_blank_lines_and_any_field_names_work_for_translation(tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_text(
        '{"en": "A dog.", "de": "Ein Hund."}\n\n{"en": "A cat.", "de": "Eine Katze."}\n'
    )
    pairs = json_files.read_pairs(str(tmp_path), "en", "de", "dev")
    assert pairs == [("A dog.", "Ein Hund."), ("A cat.", "Eine Katze.")]


def test_a_shard_holds_every_record_whose_index_it_owns(tmp_path):
    write_jsonl(tmp_path, "train.jsonl", RECORDS)
    assert [p[1] for p in read(tmp_path, shard_index=1, shard_count=2)] == ["Cat is late."]
    assert [p[1] for p in read(tmp_path, shard_index=0, shard_count=2)] == [
        "Ann and Bob meet for lunch at 1.", "Eve is done.",
    ]  # fmt: skip


def test_records_with_an_empty_side_are_skipped_and_named(tmp_path, caplog):
    records = [*RECORDS, {"dialogue": "  ", "summary": "x"}, {"dialogue": "y", "summary": ""}]
    write_json(tmp_path, "train.json", records)
    with caplog.at_level(logging.WARNING):
        pairs = read(tmp_path)
    assert len(pairs) == 3
    assert "skipped 2 records with an empty dialogue or summary (records 3, 4)" in caplog.text


@pytest.mark.parametrize(
    "records, message",
    [
        ([RECORDS[0], {"dialogue": "x"}], r"train.json: record 1 has no field 'summary'"),
        (
            [{"dialogue": 5, "summary": "x"}],
            r"record 0 field 'dialogue' is a JSON int, not a string",
        ),
        ([RECORDS[0], ["x", "y"]], r"record 1 is a JSON list, not an object"),
        ({"dialogue": "x", "summary": "y"}, r"holds a JSON dict, not a list of records"),
        ([{"dialogue": "", "summary": ""}], r"holds no record with a non-empty dialogue"),
    ],
)
def test_malformed_records_are_named_by_file_and_index(tmp_path, records, message):
    write_json(tmp_path, "train.json", records)
    with pytest.raises(CorpusError, match=message):
        read(tmp_path)


def test_invalid_json_and_utf8_are_named_by_file_and_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"dialogue": "a", "summary": "b"}\n{"dialogue": \n')
    with pytest.raises(CorpusError, match=r"train.jsonl:2: invalid JSON"):
        read(tmp_path)
    (tmp_path / "train.jsonl").write_bytes(b'{"dialogue": "a", "summary": "b"}\n{"d": "\xff"}\n')
    with pytest.raises(CorpusError, match=r"train.jsonl:2: invalid UTF-8"):
        read(tmp_path)


def test_a_missing_split_names_the_files_present_and_two_formats_are_refused(tmp_path):
    write_json(tmp_path, "val.json", RECORDS)
    with pytest.raises(CorpusError, match=r"train.json\(l\) does not exist; .* has: val.json"):
        read(tmp_path)
    write_jsonl(tmp_path, "val.jsonl", RECORDS)
    with pytest.raises(CorpusError, match=r"Both .*val.json and .*val.jsonl exist"):
        read(tmp_path, split="val")


@pytest.mark.skipif(not SAMSUM.is_dir(), reason="../shared/data not present")
def test_the_samsum_files_read_in_place(caplog):
    """The shared corpus, read where it lies: its known empty dialogue (train record 6054)
    is the one record skipped."""
    directory = str(SAMSUM)
    with caplog.at_level(logging.WARNING):
        pairs = {
            split: json_files.read_pairs(directory, "dialogue", "summary", split)
            for split in ("train", "val", "test")
        }
    assert [len(pairs[s]) for s in ("train", "val", "test")] == [14_731, 818, 819]
    assert "skipped 1 records with an empty dialogue or summary (records 6054)" in caplog.text
    assert all("\n" in dialogue for dialogue, _ in pairs["val"][:20])
