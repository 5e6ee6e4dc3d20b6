"""`python -m data_prep {tokenizer,mds,sample}`: the command line for data preparation."""

from __future__ import annotations

import argparse
import json
import sys

from data_prep import DataPrepError


def _source_args(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that reads sources."""
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="file, directory, .jsonl[.gz], .parquet, saved HF dataset dir, or hf:NAME[:CONFIG]")
    p.add_argument("--text-field", default="text", help="JSON field / parquet column / dataset column")
    p.add_argument("--glob", default="**/*", help="file pattern inside directories (recursive)")
    p.add_argument("--text-split", choices=("file", "line", "paragraph"), default="file",
                   help="how a plain text file becomes documents")
    p.add_argument("--invalid-utf8", choices=("replace", "error"), default="replace",
                   help="replace bad bytes and count them, or refuse the file")
    p.add_argument("--hf-split", default="train", help="split of a Hugging Face dataset source")


def _parser() -> argparse.ArgumentParser:
    """The three subcommands with the interface fixed by the data issue."""
    ap = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer (HF format)")
    _source_args(t)
    t.add_argument("--vocab-size", type=int, default=32768, help="multiple of 64")
    t.add_argument("--out", required=True)
    t.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    m = sub.add_parser("mds", help="tokenize sources into zstd MDS shards")
    _source_args(m)
    m.add_argument("--tokenizer", required=True, help="local directory or Hub name")
    m.add_argument("--out", required=True)
    m.add_argument("--max-doc-tokens", type=int, default=8192, help="longer documents are split (CLS/SEP included)")
    m.add_argument("--min-doc-tokens", type=int, default=1, help="shorter pieces are dropped and counted")
    m.add_argument("--val-fraction", type=float, default=0.01)
    m.add_argument("--workers", type=int, default=1)
    m.add_argument("--seed", type=int, default=17)
    m.add_argument("--shard-size", type=int, default=1 << 25, help="bytes per shard before compression")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    m.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("sample", help="build the offline stdlib sample corpus, tokenizer and shards")
    s.add_argument("--out", required=True)
    s.add_argument("--vocab-size", type=int, default=4096)
    s.add_argument("--max-bytes", type=int, default=4_000_000, help="text to take from the stdlib")
    s.add_argument("--max-doc-tokens", type=int, default=8192)
    s.add_argument("--val-fraction", type=float, default=0.02)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--seed", type=int, default=17)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--no-progress", action="store_true")
    return ap


def _source_options(a):
    from data_prep.sources import SourceOptions

    return SourceOptions(text_field=a.text_field, glob=a.glob, text_split=a.text_split,
                         invalid_utf8=a.invalid_utf8, hf_split=a.hf_split)


def _run(a) -> dict:
    """Dispatch a parsed command; returns a summary printed as JSON."""
    if a.cmd == "tokenizer":
        from data_prep.tokenizer import build_tokenizer

        tok = build_tokenizer(a.sources, _source_options(a), a.vocab_size, a.out, a.overwrite)
        return {"out": a.out, "vocab_size": len(tok)}
    if a.cmd == "mds":
        from data_prep.mds import MdsOptions, build_mds

        return build_mds(a.sources, MdsOptions(
            tokenizer=a.tokenizer, out=a.out, max_doc_tokens=a.max_doc_tokens,
            min_doc_tokens=a.min_doc_tokens, val_fraction=a.val_fraction, workers=a.workers,
            seed=a.seed, shard_size=a.shard_size, overwrite=a.overwrite,
            progress=not a.no_progress, source=_source_options(a)))
    from data_prep.sample import build_sample

    return build_sample(a.out, vocab_size=a.vocab_size, max_bytes=a.max_bytes, workers=a.workers,
                        max_doc_tokens=a.max_doc_tokens, val_fraction=a.val_fraction, seed=a.seed,
                        overwrite=a.overwrite, progress=not a.no_progress)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 with a JSON summary on stdout, or 2 with `error: ...` on stderr."""
    args = _parser().parse_args(argv)
    try:
        summary = _run(args)
    except DataPrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write the commands did not anticipate: still one line, the path
        from data_prep.outputs import disk_error

        print(f"error: {disk_error(exc, getattr(args, 'out', '?'))}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
