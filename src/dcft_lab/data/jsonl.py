"""The one JSON-lines reader of the data loaders (summaries, prompt/response rows, documents to summarize)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_jsonl(path: str | Path, expected: str = "a JSON object") -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line of a JSON-lines file.

    A line that is not valid JSON, or not a JSON object, is a one-line ValueError naming the file and the line
    (``<path>:<line>: ...``); ``expected`` says what such a line should have been (the caller's fields).
    """
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg}); expected one object per line") \
                    from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number}: expected {expected}")
            yield line_number, record


def string_columns(path: str | Path, fields: tuple[str, ...]) -> dict[str, list[str]]:
    """Columns ``fields`` of a JSON-lines file whose every object has those fields as strings (others ignored).

    A line without one of them as a string is a one-line ValueError naming the file, the line and the fields.
    """
    columns: dict[str, list[str]] = {field: [] for field in fields}
    names = " and ".join(repr(field) for field in fields)
    expected = f"an object with string fields {names}"
    for line_number, record in iter_jsonl(path, expected):
        if not all(isinstance(record.get(field), str) for field in fields):
            raise ValueError(f"{Path(path)}:{line_number}: expected {expected}")
        for field in fields:
            columns[field].append(record[field])
    return columns
