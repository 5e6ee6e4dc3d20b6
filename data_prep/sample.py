"""The embedded default corpus: Python standard-library source, present on every installation.

No network: the text comes from this interpreter's own stdlib directory, files sorted and cut
at top-level definitions, so the corpus (and its tokenizer and shards) is reproducible.
"""

from __future__ import annotations

import json
import re
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator

from data_prep.mds import MdsOptions, build_mds
from data_prep.sources import SourceOptions
from data_prep.tokenizer import train_tokenizer

SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__",
              "turtledemo", "ensurepip"}
TOP_LEVEL = re.compile(r"\n(?=(?:async def|def|class) )")


def stdlib_files() -> list[Path]:
    """Sorted stdlib `.py` files, skipping test suites and vendored trees."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if not SKIP_PARTS.intersection(p.relative_to(root).parts))


def stdlib_documents(max_bytes: int) -> Iterator[str]:
    """Cut each file into documents at top-level `def`/`class`, up to `max_bytes` of text."""
    total = 0
    for path in stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for doc in TOP_LEVEL.split(text):
            if doc.strip():
                yield doc
                total += len(doc)
                if total >= max_bytes:
                    return


# Documents longer than this are stored as separate pieces, which Streaming shuffles apart. The
# packer puts a document's pieces side by side in one batch: at the tiny recipe's 32 rows of 128
# tokens, a 8192-token stdlib module would fill two whole batches, and such batches (one
# document each) learn far less per token than varied ones (bench/quality.py). 512 is also
# the tiny context-extension length, so those phases still see whole rows of one document.
SAMPLE_MAX_DOC_TOKENS = 512


def build_sample(out: str, vocab_size: int = 4096, max_bytes: int = 4_000_000, workers: int = 1,
                 max_doc_tokens: int = SAMPLE_MAX_DOC_TOKENS, val_fraction: float = 0.02, seed: int = 17,
                 overwrite: bool = False, progress: bool = True) -> dict:
    """Corpus -> tokenizer -> shards, in the same layout `mds` writes.

    A finished sample with the same settings is reused, so the README's main job can be rerun.
    """
    settings = {"vocab_size": vocab_size, "max_bytes": max_bytes, "max_doc_tokens": max_doc_tokens,
                "val_fraction": val_fraction, "seed": seed}
    marker = Path(out) / "sample.json"
    if not overwrite and marker.is_file() and json.loads(marker.read_text()) == settings:
        print(f"{out}: sample corpus already built with these settings; reusing it", file=sys.stderr)
        return json.loads((Path(out) / "stats.json").read_text())
    if marker.is_file():  # our own earlier sample, other settings (e.g. a new default): rebuild
        print(f"{out}: sample corpus built with other settings; rebuilding it", file=sys.stderr)
        overwrite = True
    stats = _build(out, settings, workers, overwrite, progress)
    marker.write_text(json.dumps(settings) + "\n")
    return stats


def _build(out: str, settings: dict, workers: int, overwrite: bool, progress: bool) -> dict:
    vocab_size, max_bytes = settings["vocab_size"], settings["max_bytes"]
    max_doc_tokens, val_fraction, seed = (settings["max_doc_tokens"], settings["val_fraction"],
                                          settings["seed"])
    with tempfile.TemporaryDirectory(prefix="flexbert-sample-") as tmp:
        corpus = Path(tmp) / "stdlib.jsonl"
        with corpus.open("w", encoding="utf-8") as fh:
            for doc in stdlib_documents(max_bytes):
                fh.write(json.dumps({"text": doc}) + "\n")
        tok_dir = Path(tmp) / "tokenizer"
        train_tokenizer((json.loads(line)["text"] for line in corpus.open(encoding="utf-8")),
                        vocab_size, tok_dir)
        opts = MdsOptions(tokenizer=str(tok_dir), out=out, max_doc_tokens=max_doc_tokens,
                          val_fraction=val_fraction, workers=workers, seed=seed,
                          overwrite=overwrite, progress=progress, source=SourceOptions())
        return build_mds([str(corpus)], opts)
