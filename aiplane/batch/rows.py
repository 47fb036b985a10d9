"""From a raw input row to what a task needs (:class:`Item`) or why it cannot (:class:`BadRow`).

A bad row is recorded with its number and reason and the shard goes on: one malformed
line in a million must not fail the job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

#: Compact JSON, and ids that JSON cannot hold (Parquet timestamps, bytes) as strings.
ENCODER = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False)

JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A row the reader could not turn into a record (malformed JSON, wrong column count)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Item:
    """A good row: its number over the whole input, its id, and the text or chat messages."""

    row: int
    id: Any
    text: str
    messages: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class BadRow:
    row: int
    id: Any
    reason: str

    def line(self) -> str:
        return ENCODER.encode({"row": self.row, "id": self.id, "reason": self.reason})


@dataclass(frozen=True)
class Fields:
    """Which record fields hold the text and the id; ``messages`` accepts chat rows (generate)."""

    text: str = "text"
    id: str = "id"
    messages: bool = False


def json_type(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return JSON_TYPES.get(type(value), type(value).__name__)


def to_item(row: int, value: object, fields: Fields) -> Item | BadRow:
    """Check one record; a missing id makes the row number the id."""
    if isinstance(value, Unreadable):
        return BadRow(row, row, value.reason)
    if not isinstance(value, dict):
        return BadRow(row, row, f"not a JSON object ({json_type(value)})")
    ident = value.get(fields.id)
    ident = row if ident is None else ident
    if fields.messages and value.get("messages") is not None:
        messages = value["messages"]
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return BadRow(row, ident, "field 'messages' is not a non-empty list of message objects")
        return Item(row, ident, "", messages)
    text = value.get(fields.text)
    if text is None:
        return BadRow(row, ident, f"missing field {fields.text!r}")
    if not isinstance(text, str):
        return BadRow(row, ident, f"field {fields.text!r} is {json_type(text)}, expected a string")
    if not text.strip():
        return BadRow(row, ident, f"field {fields.text!r} is empty")
    return Item(row, ident, text)


def to_items(start: int, values: Iterable[object], fields: Fields) -> Iterator[Item | BadRow]:
    """Records numbered from ``start``, checked in order."""
    for row, value in enumerate(values, start):
        yield to_item(row, value, fields)
