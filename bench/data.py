"""Data benchmark: `data_prep mds` tokens/s per worker and packed+masked loader tokens/s per worker,
for pre-tokenized shards and for text shards tokenized in the loader's workers.

Offline and self-contained: the corpus is the stdlib sample text. Prints a markdown table; with
--save also writes bench/results/data.json and data.md. Usage:
python bench/data.py [--quick] [--save] [--mb 8] [--seq-len 1024] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import common as C  # bench/common.py: puts the repository on sys.path; --quick / --save


def _corpus(tmp: Path, mb: float) -> Path:
    """Stdlib documents as jsonl: realistic code+prose mix, no network."""
    from data_prep.sample import stdlib_documents

    path = tmp / "corpus.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for doc in stdlib_documents(int(mb * 1e6)):
            fh.write(json.dumps({"text": doc}) + "\n")
    return path


def bench_mds(tmp: Path, corpus: Path, tok: Path, workers: int) -> dict:
    """One full `mds` run; the per-worker figure is input tokens / wall time / workers."""
    from data_prep.mds import MdsOptions, build_mds

    start = time.perf_counter()
    stats = build_mds([str(corpus)], MdsOptions(tokenizer=str(tok), out=str(tmp / f"mds{workers}"),
                                                workers=workers, progress=False, val_fraction=0.01))
    wall = time.perf_counter() - start
    return {"workers": workers, "tokens": stats["tokens_in"], "wall_s": round(wall, 3),
            "tokens_per_s": round(stats["tokens_in"] / wall), "tokens_per_s_per_worker": round(stats["tokens_in"] / wall / workers),
            "tokenize_write_tokens_per_s_per_worker": stats["tokens_per_second_per_worker"]}


def write_text_shards(corpus: Path, out: Path) -> Path:
    """The corpus as text MDS shards (what llm-foundry's and MosaicBERT's converters write)."""
    from streaming import MDSWriter

    with MDSWriter(out=str(out / "train"), columns={"text": "str"}, compression="zstd") as w, \
            corpus.open(encoding="utf-8") as fh:
        for line in fh:
            w.write({"text": json.loads(line)["text"]})
    return out


def bench_loader(mds: Path, seq_len: int, batch: int, workers: int, batches: int, tok: Path,
                 kind: str = "tokens") -> dict:
    """Real (non-pad) tokens per second out of the loader; workers=0 runs in this process."""
    from flexbert.data import DataConfig, StreamConfig, build_pretraining_dataloader, packing_efficiency

    cfg = DataConfig(streams={"sample": StreamConfig(local=str(mds))}, max_seq_len=seq_len, num_workers=workers,
                     tokenizer=str(tok))
    it = iter(build_pretraining_dataloader(cfg, device_batch_size=batch))
    next(it)  # start-up (worker spawn, epoch order) is not throughput
    tokens, eff, start = 0, [], time.perf_counter()
    for _ in range(batches):
        b = next(it)
        tokens += int(b["attention_mask"].sum())
        eff.append(packing_efficiency(b))
    wall = time.perf_counter() - start
    procs = max(workers, 1)
    return {"shards": kind, "workers": workers, "seq_len": seq_len, "device_batch": batch, "batches": batches,
            "tokens_per_s": round(tokens / wall), "tokens_per_s_per_worker": round(tokens / wall / procs),
            "packing_efficiency_mean": round(sum(eff) / len(eff), 5), "packing_efficiency_min": round(min(eff), 5)}


def _markdown(res: dict) -> str:
    lines = ["# Data benchmark", "", f"Machine: {res['machine']}", "",
             "| stage | workers | tokens/s | tokens/s per worker | target per worker |", "|---|---|---|---|---|"]
    for r in res["mds"]:
        lines.append(f"| data_prep mds | {r['workers']} | {r['tokens_per_s']:,} | {r['tokens_per_s_per_worker']:,} | 300,000 |")
    for r in res["loader"]:
        lines.append(f"| loader, {r.get('shards', 'tokens')} shards, S={r['seq_len']} B={r['device_batch']} | "
                     f"{r['workers']} | {r['tokens_per_s']:,} | "
                     f"{r['tokens_per_s_per_worker']:,} | 1,000,000 |")
    eff = ", ".join(f"{r['packing_efficiency_mean']:.4f} (min {r['packing_efficiency_min']:.4f})" for r in res["loader"])
    lines += ["", f"Packing efficiency (mean, min per batch): {eff}.", "",
              "mds per worker = input tokens / wall time (reading, tokenizing, writing zstd shards) / workers.",
              "Loader per worker = real tokens out / wall time / worker processes (0 workers = 1 process).",
              "Text shards are tokenized, framed, packed and masked in the loader's workers.",
              "On a shared 2-core machine the 2-worker figures are bounded by the cores, not the code.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--mb", type=float, default=8.0, help="MB of stdlib text to tokenize")
    ap.add_argument("--seq-len", type=int, default=1024, help="packed row length")
    ap.add_argument("--batch", type=int, default=32, help="rows per loader batch")
    ap.add_argument("--batches", type=int, default=60, help="loader batches timed")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to try")
    C.add_output_args(ap, "0.3 MB, rows of 256, 5 batches, one worker")
    a = ap.parse_args()
    if a.quick:
        a.mb, a.seq_len, a.batch, a.batches, a.workers = 0.3, 256, 8, 5, [1]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    res = run(a)
    print(_markdown(res))
    C.save_results(a, "data", res, _markdown(res))


def run(a) -> dict:
    from data_prep.sample import stdlib_documents
    from data_prep.tokenizer import train_tokenizer

    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "mds": [], "loader": []}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        corpus = _corpus(tmp, a.mb)
        tok = tmp / "tok"
        train_tokenizer(stdlib_documents(2_000_000), 32768, tok)
        for w in a.workers:
            res["mds"].append(bench_mds(tmp, corpus, tok, w))
            print(res["mds"][-1], flush=True)
        sources = {"tokens": tmp / f"mds{a.workers[0]}", "text": write_text_shards(corpus, tmp / "text")}
        for w in (0, *[w for w in a.workers if w > 1]):
            for kind, path in sources.items():
                res["loader"].append(bench_loader(path, a.seq_len, a.batch, w, a.batches, tok, kind))
                print(res["loader"][-1], flush=True)
    return res


if __name__ == "__main__":
    main()
