"""`python -m data_prep {tokenizer,mds,sample}`: the command line for data preparation."""

from __future__ import annotations

import argparse
import json
import sys

from data_prep import DataPrepError
from data_prep.cli_format import HelpFormatter


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


EXAMPLES = """examples:
  python -m data_prep sample --out runs/sample
  python -m data_prep tokenizer docs/ --vocab-size 32768 --out data/tok
  python -m data_prep mds docs/ --tokenizer data/tok --out data/mine --workers 8"""


def _common_args(p: argparse.ArgumentParser, val_fraction: float) -> None:
    """Options every command that writes shards shares."""
    p.add_argument("--max-doc-tokens", type=int, default=8192,
                   help="longer documents are split (CLS/SEP included)")
    p.add_argument("--val-fraction", type=float, default=val_fraction,
                   help="share of documents written to val/ instead of train/")
    p.add_argument("--workers", type=int, default=1, help="tokenizer worker processes")
    p.add_argument("--seed", type=int, default=17, help="seed of the train/val split")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output directory (refused otherwise)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    """The three subcommands with the interface fixed by the data issue."""
    ap = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                 epilog=EXAMPLES, formatter_class=HelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)

    t = command("tokenizer", "train a byte-level BPE tokenizer (Hugging Face format) on sources")
    _source_args(t)
    t.add_argument("--vocab-size", type=int, default=32768, help="vocabulary size, a multiple of 64")
    t.add_argument("--out", required=True, help="tokenizer folder to write")
    t.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty output folder (refused otherwise)")
    m = command("mds", "tokenize sources into zstd MDS shards (train/, val/, stats.json, "
                "tokenizer/)")
    _source_args(m)
    m.add_argument("--tokenizer", required=True,
                   help="tokenizer: a local folder or a Hub name (copied into OUT/tokenizer)")
    m.add_argument("--out", required=True, help="output folder (the recipe's data_dir)")
    m.add_argument("--min-doc-tokens", type=int, default=1, help="shorter pieces are dropped and counted")
    m.add_argument("--shard-size", type=int, default=1 << 25, help="bytes per shard before compression")
    _common_args(m, 0.01)
    s = command("sample", "build the offline sample corpus: Python standard-library source, a "
                "BPE tokenizer and MDS shards (no download)")
    s.add_argument("--out", required=True, help="output folder (configs/tiny.yaml reads runs/sample)")
    s.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary size")
    s.add_argument("--max-bytes", type=int, default=4_000_000, help="text to take from the stdlib")
    _common_args(s, 0.02)
    s.set_defaults(max_doc_tokens=512)  # data_prep.sample.SAMPLE_MAX_DOC_TOKENS: varied batches
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
