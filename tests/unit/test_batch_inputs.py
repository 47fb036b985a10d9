"""Input readers: row numbering over the whole input, bad rows with reasons, every format."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from uuid import uuid4

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiplane.batch.errors import InputError
from aiplane.batch.inputs import count_lines, iter_lines, open_input
from aiplane.batch.rows import BadRow, Fields, Item, Unreadable, to_item, to_items


def read_all(location: str, start: int = 0, stop: int | None = None) -> list[object]:
    source = open_input(location, ("text", "id", "messages"))
    return list(source.read(start, source.count() if stop is None else stop))


@given(
    lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    final_newline=st.booleans(),
    chunk=st.integers(1, 16),
    data=st.data(),
)
def test_line_numbering_is_the_same_however_the_stream_is_chunked(
    lines: list[bytes], final_newline: bool, chunk: int, data: st.DataObject
) -> None:
    body = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    expected = lines if body else []
    if body and not final_newline and lines[-1] == b"":  # "a\n" written without newline is "a\n"
        expected = lines[:-1]
    assert count_lines(io.BytesIO(body), chunk) == len(expected)
    start = data.draw(st.integers(0, len(expected)))
    stop = data.draw(st.integers(start, len(expected) + 2))
    assert list(iter_lines(io.BytesIO(body), start, stop, chunk)) == expected[start:stop]


def test_jsonl_rows_bad_rows_and_a_final_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": 1, "text": "a"}\r\n{"id": 2, "text": \n\n[1]\n"s"\n{"id": 6, "text": "b"}')
    rows = read_all(str(path))
    assert len(rows) == 6
    assert rows[0] == {"id": 1, "text": "a"}  # CRLF is fine
    assert rows[1] == Unreadable("malformed JSON: Expecting value: column 19")
    assert rows[2] == Unreadable("malformed JSON: empty line")
    assert rows[5] == {"id": 6, "text": "b"}
    items = list(to_items(0, rows, Fields()))
    assert [type(i).__name__ for i in items] == ["Item", "BadRow", "BadRow", "BadRow", "BadRow", "Item"]
    assert items[3] == BadRow(3, 3, "not a JSON object (an array)")
    assert items[4] == BadRow(4, 4, "not a JSON object (a string)")
    # a range reads the same rows with the same numbers
    source = open_input(str(path))
    assert list(to_items(4, source.read(4, 6), Fields())) == items[4:6]


def test_a_final_newline_is_not_a_row_but_a_blank_line_is(tmp_path: Path) -> None:
    path = tmp_path / "in.ndjson"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert open_input(str(path)).count() == 3
    path.write_text("")
    assert open_input(str(path)).count() == 0


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"id": "x"}, "missing field 'text'"),
        ({"id": "x", "text": None}, "missing field 'text'"),
        ({"id": "x", "text": "   "}, "field 'text' is empty"),
        ({"id": "x", "text": 7}, "field 'text' is a number, expected a string"),
        ({"id": "x", "text": ["a"]}, "field 'text' is an array, expected a string"),
    ],
)
def test_text_field_problems_name_the_field(record: dict[str, object], reason: str) -> None:
    assert to_item(9, record, Fields()) == BadRow(9, "x", reason)


def test_ids_default_to_the_row_and_generate_accepts_messages() -> None:
    assert to_item(5, {"body": "hi"}, Fields(text="body")) == Item(5, 5, "hi")
    assert to_item(5, {"key": 0, "text": "hi"}, Fields(id="key")) == Item(5, 0, "hi")
    chat = [{"role": "user", "content": "hi"}]
    assert to_item(1, {"messages": chat}, Fields(text="prompt", messages=True)) == Item(1, 1, "", chat)
    assert to_item(1, {"messages": []}, Fields(messages=True)).reason.startswith("field 'messages'")  # type: ignore[union-attr]
    assert to_item(1, {"messages": chat}, Fields()) == BadRow(1, 1, "missing field 'text'")


def test_csv_header_quoted_newlines_and_wrong_column_counts(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerow(["a", "one line"])
        w.writerow(["b", "two\nlines, with a comma"])
        w.writerow(["c"])
        w.writerow([])  # blank lines are not rows
        w.writerow(["d", "x" * 200_000])  # longer than csv's default field limit
        w.writerow(["e", "four", "extra"])
    rows = read_all(str(path))
    assert rows == [
        {"id": "a", "text": "one line"},
        {"id": "b", "text": "two\nlines, with a comma"},
        Unreadable("1 columns, the header has 2"),
        {"id": "d", "text": "x" * 200_000},
        Unreadable("3 columns, the header has 2"),
    ]
    assert read_all(str(path), 2, 4) == rows[2:4]


def test_gzipped_jsonl_and_csv(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n{"text": "y"}\n'))
    (tmp_path / "b.csv.gz").write_bytes(gzip.compress(b"text\nx\ny\nz\n"))
    assert read_all(str(tmp_path / "a.jsonl.gz")) == [{"text": "x"}, {"text": "y"}]
    assert read_all(str(tmp_path / "b.csv.gz"), 1) == [{"text": "y"}, {"text": "z"}]


def test_parquet_counts_from_metadata_and_reads_ranges_across_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    table = pa.table({"id": list(range(10)), "text": [f"t{i}" for i in range(10)], "big": ["z" * 100] * 10})
    pq.write_table(table, path, row_group_size=3)
    source = open_input(str(path), ("text", "id", "messages"))
    assert source.count() == 10
    assert list(source.read(2, 8)) == [{"id": i, "text": f"t{i}"} for i in range(2, 8)]  # only needed columns
    assert list(source.read(9, 10)) == [{"id": 9, "text": "t9"}]
    assert list(source.read(4, 4)) == []


def test_a_directory_is_its_files_concatenated_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.jsonl").write_text('{"text": "b0"}\n{"text": "b1"}\n')
    (tmp_path / "a.csv").write_text("text\na0\n")
    pq.write_table(pa.table({"text": ["c0", "c1"]}), tmp_path / "c.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "README.md").write_text("not data")
    source = open_input(str(tmp_path), ("text",))
    assert source.count() == 5
    assert [r["text"] for r in source.read(0, 5)] == ["a0", "b0", "b1", "c0", "c1"]  # type: ignore[index]
    assert [r["text"] for r in source.read(1, 4)] == ["b0", "b1", "c0"]  # type: ignore[index]


def test_fsspec_urls_read_like_paths() -> None:
    fsspec = pytest.importorskip("fsspec")
    url = f"memory://batch-{uuid4().hex}/in.jsonl"
    with fsspec.open(url, "wb") as f:
        f.write(b"".join(json.dumps({"text": f"r{i}"}).encode() + b"\n" for i in range(5)))
    assert read_all(url, 3) == [{"text": "r3"}, {"text": "r4"}]
    assert [r["text"] for r in read_all(url.rsplit("/", 1)[0])] == [f"r{i}" for i in range(5)]  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.jsonl", "AIPLANE_INPUT {path}: no such file or directory"),
        ("data.txt", "AIPLANE_INPUT {path}: unknown format, expected .jsonl, .ndjson, .csv or .parquet"),
        ("data.parquet.gz", "AIPLANE_INPUT {path}: unknown format"),
    ],
)
def test_input_problems_are_one_line_naming_the_file(tmp_path: Path, name: str, message: str) -> None:
    path = tmp_path / name
    if name != "missing.jsonl":
        path.write_text("x")
    with pytest.raises(InputError) as info:
        open_input(str(path))
    assert str(info.value).startswith(message.format(path=path))
    assert "\n" not in str(info.value)


def test_a_missing_fsspec_backend_says_what_to_install() -> None:
    with pytest.raises(InputError, match=r"s3://bucket/in.jsonl: the s3:// backend is not installed .*s3fs"):
        open_input("s3://bucket/in.jsonl")
    with pytest.raises(InputError, match="fsspec cannot open nosuch:// URLs"):
        open_input("nosuch://x/in.jsonl")


def test_a_corrupt_gzip_or_parquet_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match=r"in\.jsonl\.gz: cannot read it"):
        open_input(str(tmp_path / "in.jsonl.gz")).count()
    (tmp_path / "in.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(InputError, match=r"in\.parquet: not a readable Parquet file"):
        open_input(str(tmp_path / "in.parquet")).count()
