"""Task files read row by row, so a bad row is reported as FILE:LINE: what is wrong with which
field (CSV/TSV/JSONL tables, CoNLL token files)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable, Optional

from flexbert.config import ConfigError

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".ndjson")
CONLL_SUFFIXES = (".conll", ".conllu", ".bio", ".iob", ".txt")
SPLIT_NAMES = {"train": ("train",), "eval": ("dev", "validation", "valid", "val", "test")}


class TaskFileError(ConfigError):
    """A task file with a row that cannot be used: the message is `file:line: field: problem`."""


def fail(path: Any, line: int, message: str) -> TaskFileError:
    return TaskFileError(f"{path}:{line}: {message}")


def read_table(path: str | Path) -> list[dict]:
    """Rows of a CSV, TSV or JSONL file as dicts (each row remembers its line as `__line__`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: task file not found")
    try:
        if path.suffix.lower() in (".csv", ".tsv"):
            return _read_csv(path, "\t" if path.suffix.lower() == ".tsv" else ",")
        return list(_read_jsonl(path))
    except UnicodeDecodeError as err:
        raise not_utf8(path, err) from None


def not_utf8(path: Path, err: UnicodeDecodeError) -> ValueError:
    return ValueError(f"{path}: not UTF-8 text (byte {err.start} of the file: {err.reason}); "
                      "save the task file as UTF-8")


def _read_csv(path: Path, delimiter: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        rows = []
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise fail(path, reader.line_num, f"expected {len(header)} columns "
                           f"({', '.join(header)}), got a different count")
            rows.append({**row, "__line__": reader.line_num})
    return rows


def _read_jsonl(path: Path) -> Iterable[dict]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise fail(path, number, f"not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise fail(path, number, f"expected a JSON object, got {type(row).__name__}")
            yield {**row, "__line__": number}


def require(row: dict, path: Any, field: str, kind: type | tuple = (str,)) -> Any:
    """row[field], or an error naming the file, the line and the field."""
    if field not in row or row[field] is None:
        raise fail(path, row.get("__line__", 0), f"field {field!r} missing "
                   f"(the row has {', '.join(k for k in row if k != '__line__')})")
    value = row[field]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise fail(path, row.get("__line__", 0), f"field {field!r}: expected {names}, "
                   f"got {type(value).__name__} {value!r:.40}")
    return value


def read_conll(path: str | Path) -> list[dict]:
    """CoNLL-style: one `token ... TAG` per line (the tag is the last column), a blank line
    between sentences, `-DOCSTART-` lines skipped. -> [{"tokens": [...], "tags": [...]}]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: task file not found")
    try:
        return _conll_sentences(path)
    except UnicodeDecodeError as err:
        raise not_utf8(path, err) from None


def _conll_sentences(path: Path) -> list[dict]:
    sentences: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 1
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if tokens:
                    sentences.append({"tokens": tokens, "tags": tags, "__line__": start})
                tokens, tags, start = [], [], number + 1
                continue
            if len(parts) < 2:
                raise fail(path, number, f"expected 'TOKEN TAG' (whitespace-separated), got {line.strip()!r}")
            tokens.append(parts[0])
            tags.append(parts[-1])
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags, "__line__": start})
    return sentences


def split_files(folder: str | Path, suffixes: tuple[str, ...]) -> Optional[tuple[Path, Path]]:
    """(train, eval) files in a task folder: train.* and the first of dev/validation/test.*."""
    folder = Path(folder)

    def find(names: tuple[str, ...]) -> Optional[Path]:
        for name in names:
            for suffix in suffixes:
                if (folder / f"{name}{suffix}").is_file():
                    return folder / f"{name}{suffix}"
        return None

    train, dev = find(SPLIT_NAMES["train"]), find(SPLIT_NAMES["eval"])
    return (train, dev) if train and dev else None
