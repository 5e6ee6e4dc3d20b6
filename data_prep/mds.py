"""Tokenize documents in worker processes and write zstd MDS shards of `input_ids` plus stats.json.

Output is assembled in a hidden sibling directory and renamed into place only when complete, so
a failed run never leaves a folder that a later run (or the loader) would take for finished.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from data_prep import DataPrepError
from data_prep.outputs import check_output, clean_leftovers, disk_error
from data_prep.sources import SourceOptions, iter_documents, segments
from data_prep.tokenizer import load_tokenizer, save_tokenizer

SPLITS = ("train", "val")
BATCH_CHARS = 1 << 20    # characters the tokenizer encodes at once
CHUNK_CHARS = 1 << 23    # characters handed to a worker at once


@dataclass
class MdsOptions:
    """Knobs of `python -m data_prep mds`; defaults suit ModernBERT phase 1."""

    tokenizer: str
    out: str
    max_doc_tokens: int = 8192  # including CLS and SEP; longer documents are split into pieces
    min_doc_tokens: int = 1  # pieces with fewer content tokens are dropped (counted)
    val_fraction: float = 0.01
    workers: int = 1
    seed: int = 17
    shard_size: int = 1 << 25
    chunk_docs: int = 256
    overwrite: bool = False
    progress: bool = True
    source: SourceOptions = field(default_factory=SourceOptions)


def check_options(opts: MdsOptions) -> None:
    """Reject impossible settings before any work starts."""
    if opts.max_doc_tokens < 3:
        raise DataPrepError(f"--max-doc-tokens {opts.max_doc_tokens}: must be at least 3 (CLS + token + SEP)")
    if not 0.0 <= opts.val_fraction < 1.0:
        raise DataPrepError(f"--val-fraction {opts.val_fraction}: must be in [0, 1)")
    if opts.workers < 1:
        raise DataPrepError(f"--workers {opts.workers}: must be at least 1")
    if opts.min_doc_tokens < 1:
        raise DataPrepError(f"--min-doc-tokens {opts.min_doc_tokens}: must be at least 1")


def is_val(doc_index: int, seed: int, val_fraction: float) -> bool:
    """Hash-based split: a document's split depends on its index and the seed, not on workers."""
    return zlib.crc32(f"{seed}:{doc_index}".encode()) / 2**32 < val_fraction


# --- worker side -------------------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(tokenizer_json: str, settings: dict) -> None:
    """Load the raw Rust tokenizer once per worker; one thread each so workers scale cleanly."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _WORKER["tok"] = Tokenizer.from_file(tokenizer_json)
    _WORKER.update(settings)


def _process_chunk(chunk: list[tuple[int, list[str]]]) -> dict:
    """Tokenize a chunk of (doc index, text segments) and cut it into framed pieces with full
    accounting."""
    s = _WORKER
    segs = [seg for _, parts in chunk for seg in parts]
    ids = iter(_encode_segments(s["tok"], segs, s["dtype"]))
    out = {"pieces": [], "counts": Counter()}
    for idx, parts in chunk:
        doc = [next(ids) for _ in parts]
        empty = not any(seg.strip() for seg in parts)
        _account_document(idx, empty, np.concatenate(doc) if len(doc) > 1 else doc[0], s, out)
    return out


def _encode_segments(tok, segs: list[str], dtype: str) -> list[np.ndarray]:
    """Token ids per segment, encoded in batches of at most BATCH_CHARS characters: the
    tokenizer's per-token bookkeeping (strings, offsets) never covers more than one batch."""
    out: list[np.ndarray] = []
    batch: list[str] = []
    chars = 0
    for seg in segs + [None]:
        if seg is None or (batch and chars + len(seg) > BATCH_CHARS):
            out += [np.asarray(e.ids, dtype=dtype)
                    for e in tok.encode_batch(batch, add_special_tokens=False)]
            batch, chars = [], 0
        if seg is not None:
            batch.append(seg)
            chars += len(seg)
    return out


def _account_document(idx: int, empty: bool, arr: np.ndarray, s: dict, out: dict) -> None:
    """Split one document into pieces of <= max content tokens; count every token once."""
    c = out["counts"]
    c["documents"] += 1
    if empty or not len(arr):
        c["skipped_empty"] += 1
        return
    c["tokens_in"] += len(arr)
    split = "val" if is_val(idx, s["seed"], s["val_fraction"]) else "train"
    step = s["max_doc_tokens"] - 2
    pieces = [arr[i:i + step] for i in range(0, len(arr), step)]
    if len(pieces) > 1:
        c["documents_split"] += 1
    kept = 0
    for piece in pieces:
        if len(piece) < s["min_doc_tokens"]:
            c["dropped_too_short"] += len(piece)
            continue
        framed = np.concatenate([[s["cls"]], piece, [s["sep"]]]).astype(s["dtype"])
        out["pieces"].append((split, framed))
        c["tokens_written"] += len(piece)
        kept += 1
    c["documents_written" if kept else "skipped_too_short"] += 1


# --- main side ---------------------------------------------------------------------------------

def _chunks(docs: Iterable[str], max_docs: int) -> Iterator[list[tuple[int, list[str]]]]:
    """Number documents globally (the split hash needs it), cut long ones into segments and group
    them for the pool: at most `max_docs` documents or CHUNK_CHARS characters a chunk (a single
    longer document travels alone)."""
    chunk: list[tuple[int, list[str]]] = []
    chars = 0
    for idx, text in enumerate(docs):
        if chunk and chars + len(text) > CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
        chunk.append((idx, segments(text)))
        chars += len(text)
        if len(chunk) >= max_docs:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _writers(tmp: Path, dtype: str, shard_size: int, val_fraction: float) -> dict:
    """One MDS writer per split: zstd compressed, xxh64 hashed so corruption is detectable.
    `--val-fraction 0` writes no val split at all (train.py then trains without evaluation)."""
    from streaming import MDSWriter

    splits = SPLITS if val_fraction > 0 else ("train",)
    return {split: MDSWriter(out=str(tmp / split), columns={"input_ids": f"ndarray:{dtype}"},
                             compression="zstd", hashes=["xxh64"], size_limit=shard_size)
            for split in splits}


def _settings(opts: MdsOptions, tok, dtype: str) -> dict:
    """What a worker needs, as plain data that pickles."""
    return {"cls": tok.cls_token_id, "sep": tok.sep_token_id, "dtype": dtype,
            "max_doc_tokens": opts.max_doc_tokens, "min_doc_tokens": opts.min_doc_tokens,
            "seed": opts.seed, "val_fraction": opts.val_fraction}


def _results(opts: MdsOptions, tokenizer_json: str, settings: dict, docs) -> Iterator[dict]:
    """Run chunks in-process for one worker, or an ordered pool (deterministic output) for many."""
    chunks = _chunks(docs, opts.chunk_docs)
    if opts.workers == 1:
        _init_worker(tokenizer_json, settings)
        yield from map(_process_chunk, chunks)
        return
    import multiprocessing as mp

    with mp.get_context("fork").Pool(opts.workers, _init_worker, (tokenizer_json, settings)) as pool:
        yield from pool.imap(_process_chunk, chunks, chunksize=1)


def _write_all(opts: MdsOptions, tmp: Path, tok, docs) -> Counter:
    """Stream worker results into the split writers, accumulating the counters."""
    from tqdm import tqdm

    dtype = "uint16" if len(tok) <= 1 << 16 else "uint32"
    totals: Counter = Counter()
    writers = _writers(tmp, dtype, opts.shard_size, opts.val_fraction)
    bar = tqdm(desc="mds", unit="tok", unit_scale=True, disable=None if opts.progress else True)
    try:
        for res in _results(opts, str(tmp / "tokenizer" / "tokenizer.json"), _settings(opts, tok, dtype), docs):
            for split, framed in res["pieces"]:
                writers[split].write({"input_ids": framed})
                totals[f"{split}_samples"] += 1
                totals[f"{split}_tokens"] += len(framed)
            totals.update(res["counts"])
            bar.update(res["counts"]["tokens_in"])
    finally:
        bar.close()
        for w in writers.values():
            w.finish()
    if not totals["val_samples"]:  # no document drew val: an empty split would crash the loader
        shutil.rmtree(tmp / "val", ignore_errors=True)
    totals["dtype_bits"] = 16 if dtype == "uint16" else 32
    return totals


def _stats(opts: MdsOptions, c: Counter, seconds: float, src: SourceOptions) -> dict:
    """The stats.json layout: every input token is either written or dropped with a reason."""
    dropped = {"too_short": c["dropped_too_short"]}
    return {
        "documents": c["documents"], "documents_written": c["documents_written"],
        "documents_split": c["documents_split"],
        "documents_skipped": {"empty": c["skipped_empty"], "too_short": c["skipped_too_short"]},
        "invalid_utf8_documents": src.counters["invalid_utf8_docs"],
        "tokens_in": c["tokens_in"], "tokens_written": c["tokens_written"], "tokens_dropped": dropped,
        "accounting_ok": c["tokens_in"] == c["tokens_written"] + sum(dropped.values()),
        "splits": {s: {"samples": c[f"{s}_samples"], "tokens": c[f"{s}_tokens"]} for s in SPLITS},
        "dtype": f"uint{c['dtype_bits']}", "max_doc_tokens": opts.max_doc_tokens,
        "min_doc_tokens": opts.min_doc_tokens, "val_fraction": opts.val_fraction, "seed": opts.seed,
        "workers": opts.workers, "seconds": round(seconds, 3),
        "tokens_per_second": round(c["tokens_in"] / seconds, 1) if seconds > 0 else None,
        "tokens_per_second_per_worker": round(c["tokens_in"] / seconds / opts.workers, 1) if seconds > 0 else None,
    }


def build_mds(sources: list[str], opts: MdsOptions) -> dict:
    """Tokenize `sources` into `opts.out/{train,val}` + stats.json + tokenizer/, atomically."""
    check_options(opts)
    out = check_output(opts.out, sources, opts.overwrite)
    tok = load_tokenizer(opts.tokenizer)
    clean_leftovers(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(sources, opts, tok, tmp, out)
    except OSError as exc:  # full or read-only disk, permissions: one line naming the output
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(exc, out) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return json.loads((out / "stats.json").read_text())


def _build(sources: list[str], opts: MdsOptions, tok, tmp: Path, out: Path) -> None:
    """Write everything into `tmp`, then swap it into place as `out`."""
    save_tokenizer(tok, tmp / "tokenizer")
    start = time.perf_counter()
    counts = _write_all(opts, tmp, tok, iter_documents(sources, opts.source))
    stats = _stats(opts, counts, time.perf_counter() - start, opts.source)
    if stats["documents_written"] == 0:
        raise DataPrepError(f"{', '.join(sources)}: no documents to write "
                            f"({stats['documents']} read, all empty or too short)")
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    _publish(tmp, out)


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished directory into place; an old output is removed only after success."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
