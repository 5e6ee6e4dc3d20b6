"""How one sample becomes one document's token ids: the stream's column (token ids in any integer
dtype or raw int64 bytes, or text tokenized here with the run's tokenizer), [CLS]/[SEP] framing,
and the vocabulary check that names the shard instead of failing later inside the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

FRAMED = ("auto", "true", "false")


class ShardError(ValueError):
    """A shard that cannot be trained on (corrupted, bad token ids); the message names it.
    Training reports it in one line, exit 2, also when raised in a DataLoader worker."""


def shard_error_line(err: ShardError) -> str:
    """The message itself: a worker's copy is wrapped in "Caught ShardError in DataLoader
    worker ..." and the original traceback, whose last line holds it."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    return last.split("ShardError: ", 1)[-1] if lines and lines[0].startswith("Caught") else lines[0]


@dataclass
class StreamFormat:
    """What the loader needs to know about one stream's samples."""

    name: str  # the key under data.streams
    source: str  # the stream's directory as the user gave it (for messages)
    column: str  # "input_ids" or "text"
    encoding: str  # Streaming's column encoding, e.g. "ndarray:uint16", "bytes", "str"
    framed: str  # auto | true | false


def normalise_framed(value: Any) -> str:
    """YAML gives `true` / `false` as booleans; the setting is one of auto | true | false."""
    return str(value).lower()


def shard_columns(reader) -> dict[str, str]:
    """Column name -> encoding of a Streaming shard reader (MDS readers carry both lists)."""
    names = getattr(reader, "column_names", None)
    if names is not None:
        return dict(zip(names, reader.column_encodings))
    return {name: str(enc) for name, enc in (getattr(reader, "columns", None) or {}).items()}


def stream_format(name: str, source: str, framed: str, columns: dict[str, str]) -> StreamFormat:
    """Token ids win over text when a shard carries both; neither is an error naming what is there."""
    for column in ("input_ids", "text"):
        if column in columns:
            return StreamFormat(name, source, column, columns[column], normalise_framed(framed))
    raise ValueError(f"data.streams.{name}: the shards in {source} have columns {sorted(columns)}; "
                     f"expected `input_ids` (token ids) or `text`")


class Documents:
    """Reads documents from a StreamingDataset; pickles into DataLoader workers."""

    def __init__(self, ds, formats: list[StreamFormat], special: dict, encoder: Any = None):
        self.ds, self.formats, self.encoder = ds, formats, encoder
        self.cls, self.sep, self.vocab = special.get("cls"), special.get("sep"), int(special["vocab_size"])
        text = [f.name for f in formats if f.column == "text"]
        if text and encoder is None:
            raise ValueError(f"data.streams.{text[0]}: a `text` stream is tokenized with the run's fast "
                             f"tokenizer; set data.tokenizer to a tokenizer directory or Hub name")

    def stream_of(self, sample_id: int) -> int:
        return int(self.ds.stream_per_shard[self.ds.spanner[int(sample_id)][0]])

    def read(self, sample_id: int) -> np.ndarray:
        """One framed document; every failure names the shard (and the stream)."""
        fmt = self.formats[self.stream_of(sample_id)]
        try:
            value = self.ds[int(sample_id)][fmt.column]
            doc = self._tokenize(value) if fmt.column == "text" else _as_ids(value, fmt.encoding)
        except Exception as exc:  # zstd/struct/numpy errors all mean the same thing to the user
            raise ShardError(f"data.streams.{fmt.name}: shard {self.shard_path(sample_id)} is truncated or "
                             f"corrupted (sample {sample_id}: {type(exc).__name__}: {exc})") from exc
        if len(doc) and (int(doc.max()) >= self.vocab or int(doc.min()) < 0):
            bad = int(doc.max()) if int(doc.max()) >= self.vocab else int(doc.min())
            raise ShardError(f"data.streams.{fmt.name}: shard {self.shard_path(sample_id)}: sample {sample_id} "
                             f"has token id {bad}, outside the tokenizer's vocabulary of {self.vocab}")
        return self._frame(doc, fmt.framed, sample_id)

    def _tokenize(self, text: str) -> np.ndarray:
        if self.encoder is None:
            raise ValueError("a `text` stream needs the run's tokenizer (data.tokenizer)")
        return tokenize_text(self.encoder, text)

    def _frame(self, doc: np.ndarray, framed: str, sample_id: int) -> np.ndarray:
        """[CLS] doc [SEP], as data_prep writes documents; `auto` adds only what is missing."""
        if framed == "true":
            if len(doc) == 0:
                raise ShardError(f"shard {self.shard_path(sample_id)}: sample {sample_id} is empty")
            return doc
        head = framed == "false" or len(doc) == 0 or doc[0] != self.cls
        tail = framed == "false" or len(doc) == 0 or doc[-1] != self.sep
        if not (head or tail):
            return doc
        return np.concatenate([[self.cls] * head, doc, [self.sep] * tail]).astype(np.int64)

    def shard_path(self, sample_id: int) -> str:
        """The shard file in the user's data directory (not the cache it is read through)."""
        shard_id, _ = self.ds.spanner[int(sample_id)]
        fmt = self.formats[self.stream_of(sample_id)]
        reader = self.ds.shards[shard_id]
        name = reader.zip_data.basename if reader.zip_data else reader.raw_data.basename
        return os.path.join(fmt.source, name)


def tokenize_text(encoder: Any, text: str) -> np.ndarray:
    """Token ids of one document, encoded in segments cut before a space or newline as
    `data_prep mds` cuts them (the same ids for byte-level BPE): the tokenizer's per-token
    strings and offsets never cover more than one segment, whatever the document's size."""
    from data_prep.sources import segments

    parts = [np.asarray(encoder.encode(seg, add_special_tokens=False).ids, dtype=np.int64)
             for seg in segments(text)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _as_ids(value: Any, encoding: str) -> np.ndarray:
    """Token ids from any integer ndarray, or from raw bytes of int64 (an older layout)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) % 8:
            raise ValueError(f"raw `input_ids` bytes ({len(value)}) are not a whole number of int64 values")
        return np.frombuffer(value, dtype=np.int64)
    ids = np.asarray(value)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"`input_ids` ({encoding}) decoded to {ids.dtype} of shape {ids.shape}, "
                         f"not a 1-d integer array")
    return ids


def run_encoder(tokenizer: Any) -> Optional[Any]:
    """The fast (Rust) tokenizer behind a transformers tokenizer: it pickles into workers and
    encodes without Python overhead. Slow tokenizers have none and cannot read text streams."""
    return getattr(tokenizer, "backend_tokenizer", None)
