"""Turn source arguments (files, directories, jsonl, parquet, HF datasets) into a stream of documents.

Every error names the file (and line) at fault, so a bad input in a large pile is easy to find.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from data_prep import DataPrepError

BINARY_PROBE = 8192
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
SEGMENT_CHARS = 1 << 18  # long documents are tokenized in pieces of at most this many characters


@dataclass
class SourceOptions:
    """How to read sources; shared by `tokenizer` and `mds`."""

    text_field: str = "text"
    glob: str = "**/*"
    text_split: str = "file"  # file | line | paragraph: how a plain text file becomes documents
    invalid_utf8: str = "replace"  # replace (and count) | error
    hf_split: str = "train"
    counters: Counter = field(default_factory=Counter)


def iter_documents(sources: list[str], opts: SourceOptions) -> Iterator[str]:
    """Yield documents from every source in order; files inside directories are sorted."""
    for src in sources:
        yield from _iter_source(src, opts)


def _iter_source(src: str, opts: SourceOptions) -> Iterator[str]:
    """Dispatch on what the source argument names."""
    if src.startswith("hf:"):
        yield from _iter_hf(src[3:], opts)
        return
    path = Path(src)
    if not path.exists():
        raise DataPrepError(f"{src}: no such file or directory")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        yield from _iter_hf_disk(path, opts)
    elif path.is_dir():
        files = sorted(p for p in path.glob(opts.glob) if p.is_file())
        if not files:
            raise DataPrepError(f"{src}: directory has no files matching {opts.glob!r}")
        for f in files:
            yield from _iter_file(f, opts)
    else:
        yield from _iter_file(path, opts)


def _iter_file(path: Path, opts: SourceOptions) -> Iterator[str]:
    """Pick the reader by suffix; anything unknown is plain text."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        yield from _iter_jsonl(path, opts)
    elif name.endswith(".parquet"):
        yield from _iter_parquet(path, opts)
    else:
        yield from _iter_text(path, opts)


READ_ERRORS = (OSError, EOFError, zlib.error)  # gzip raises all three for damaged files


def _open(path: Path):
    """A binary handle; `.gz` files are decompressed as they are read, never whole."""
    try:
        return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")
    except OSError as exc:
        raise DataPrepError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) streamed from a file; a damaged or unreadable file names itself."""
    lineno = 0
    try:
        with _open(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                yield lineno, line
    except READ_ERRORS as exc:
        raise DataPrepError(f"{path}:{lineno + 1}: cannot read ({getattr(exc, 'strerror', None) or exc})"
                            ) from exc


def _read_bytes(path: Path) -> bytes:
    """A whole file (a plain text file that is one document)."""
    try:
        with _open(path) as fh:
            return fh.read()
    except READ_ERRORS as exc:
        raise DataPrepError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc


def decode(raw: bytes, where: str, opts: SourceOptions) -> str:
    """Decode UTF-8; bad bytes are replaced and counted, or refused, by `--invalid-utf8`."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if opts.invalid_utf8 == "error":
            raise DataPrepError(f"{where}: invalid UTF-8 at byte {exc.start} "
                                f"(use --invalid-utf8 replace to keep it)") from exc
        opts.counters["invalid_utf8_docs"] += 1
        return raw.decode("utf-8", errors="replace")


def _iter_text(path: Path, opts: SourceOptions) -> Iterator[str]:
    """Plain text: refuse binaries (NUL bytes), then split into documents; line and paragraph
    splits stream the file, a whole-file document is read whole (it is one document)."""
    with _open(path) as fh:
        try:
            head = fh.read(BINARY_PROBE)
        except READ_ERRORS as exc:
            raise DataPrepError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc
    if b"\x00" in head:
        raise DataPrepError(f"{path}: binary file (NUL bytes in the first {BINARY_PROBE} bytes), not text")
    if opts.text_split == "file":
        yield decode(_read_bytes(path), str(path), opts)
        return
    paragraph: list[str] = []
    for lineno, raw in _lines(path):
        line = decode(raw, f"{path}:{lineno}", opts).rstrip("\r\n")
        if opts.text_split == "line":
            yield line
        elif line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def _iter_jsonl(path: Path, opts: SourceOptions) -> Iterator[str]:
    """One JSON object per line, streamed; the document is `text_field`. Blank lines are ignored."""
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(decode(line, where, opts))
        except json.JSONDecodeError as exc:
            raise DataPrepError(f"{where}: not valid JSON ({exc.msg})") from exc
        yield _field(obj, opts.text_field, where)


def _field(obj, name: str, where: str) -> str:
    """Fetch the text field, with an error that says which field and where."""
    if not isinstance(obj, dict) or name not in obj:
        raise DataPrepError(f"{where}: missing text field {name!r} (set --text-field)")
    value = obj[name]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataPrepError(f"{where}: text field {name!r} is {type(value).__name__}, not a string")
    return value


def _iter_parquet(path: Path, opts: SourceOptions) -> Iterator[str]:
    """Stream a parquet column in record batches so big files never sit in memory whole."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for corrupt files
        raise DataPrepError(f"{path}: not a readable parquet file ({exc})") from exc
    if opts.text_field not in pf.schema_arrow.names:
        raise DataPrepError(f"{path}: missing text column {opts.text_field!r} "
                            f"(columns: {', '.join(pf.schema_arrow.names)})")
    import pyarrow as pa

    kind = pf.schema_arrow.field(opts.text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataPrepError(f"{path}: text column {opts.text_field!r} holds {kind}, not strings "
                            "(set --text-field)")
    try:
        for batch in pf.iter_batches(columns=[opts.text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                yield value or ""
    except (OSError, pa.ArrowException) as exc:
        raise DataPrepError(f"{path}: cannot read ({exc})") from exc


def _iter_hf(spec: str, opts: SourceOptions) -> Iterator[str]:
    """`hf:NAME` or `hf:NAME:CONFIG`, streamed with the `datasets` library (split from --hf-split)."""
    import datasets

    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=opts.hf_split, streaming=True)
    except Exception as exc:  # network, missing dataset, bad config: all need the name in the message
        raise DataPrepError(f"hf:{spec}: cannot load dataset ({exc})") from exc
    yield from _iter_rows(ds, f"hf:{spec}", opts)


def _iter_hf_disk(path: Path, opts: SourceOptions) -> Iterator[str]:
    """A directory written by `Dataset.save_to_disk` (or a DatasetDict: --hf-split picks one)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataPrepError(f"{path}: cannot load saved dataset ({exc})") from exc
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[opts.hf_split]
    yield from _iter_rows(ds, str(path), opts)


def _iter_rows(ds, where: str, opts: SourceOptions) -> Iterator[str]:
    """Rows of a `datasets` dataset; row numbers make a missing field easy to locate."""
    for i, row in enumerate(ds):
        yield _field(row, opts.text_field, f"{where} row {i}")


def segments(text: str, size: int = SEGMENT_CHARS) -> list[str]:
    """Cut a long text into pieces of at most `size` characters, each cut just before a space or
    newline where there is one: byte-level BPE splits words there anyway, so the tokens are the
    same as for the whole text."""
    parts, start = [], 0
    while len(text) - start > size:
        end = start + size
        cut = max(text.rfind(" ", start + size // 2, end), text.rfind("\n", start + size // 2, end))
        cut = cut if cut > start else end
        parts.append(text[start:cut])
        start = cut
    parts.append(text[start:])
    return parts
