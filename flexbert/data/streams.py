"""Build the StreamingDataset behind the loader and check its shards before training starts.

The StreamingDataset supplies stream mixing (proportion / repeat / choose), the epoch's shuffled
sample order and random access that downloads and caches remote shards; packing and resumption
sit on top of it (see dataset.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from flexbert.data.config import DataConfig


def stream_split(stream_split_name, loader_split: str) -> str:
    """A stream without its own split reads the loader's split directory."""
    return stream_split_name if stream_split_name is not None else loader_split


def build_streaming_dataset(cfg: DataConfig, split: str):
    """One StreamingDataset over every configured stream, for `split` ("train" or "val")."""
    from streaming import Stream, StreamingDataset

    streams = []
    for name, s in cfg.streams.items():
        sp = stream_split(s.split, split)
        if cfg.verify_shards and (s.remote is None or _has_index(s.local, sp)):
            verify_local_shards(s.local, sp, f"data.streams.{name}", cfg.verify_hashes)
        streams.append(Stream(local=s.local or None, remote=s.remote, split=sp, proportion=s.proportion,
                              repeat=s.repeat, choose=s.choose, download_timeout=cfg.download_timeout))
    return StreamingDataset(streams=streams, shuffle=cfg.shuffle and split == "train", shuffle_seed=cfg.seed,
                            shuffle_algo=cfg.shuffle_algo, shuffle_block_size=cfg.shuffle_block_size,
                            num_canonical_nodes=cfg.num_canonical_nodes, cache_limit=cfg.cache_limit,
                            batch_size=1, allow_unsafe_types=False)


def _has_index(local: str, split: str) -> bool:
    return bool(local) and (Path(local) / split / "index.json").exists()


def verify_local_shards(local: str, split: str, where: str, hashes: bool = False) -> None:
    """Catch truncated or corrupted shards up front, naming the file, instead of mid-training."""
    root = Path(local) / split
    index = root / "index.json"
    if not index.exists():
        raise ValueError(f"{where}: {index} not found (is `local` a data_prep output directory?)")
    try:
        shards = json.loads(index.read_text())["shards"]
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{where}: {index} is not a valid MDS index ({exc})") from exc
    for shard in shards:
        _verify_shard(root, shard, where, hashes)


def _verify_shard(root: Path, shard: dict, where: str, hashes: bool) -> None:
    """Compare each present shard file's size (and optionally xxh64) with the index."""
    for key in ("zip_data", "raw_data"):
        info = shard.get(key)
        if not info:
            continue
        path = root / info["basename"]
        if not path.exists():
            continue
        size = os.path.getsize(path)
        if size != info["bytes"]:
            raise ValueError(f"{where}: shard {path} is truncated or corrupted "
                             f"({size} bytes, index says {info['bytes']})")
        if hashes and "xxh64" in info.get("hashes", {}):
            _check_hash(path, info["hashes"]["xxh64"], where)


def _check_hash(path: Path, expected: str, where: str) -> None:
    import xxhash

    if xxhash.xxh64(path.read_bytes()).hexdigest() != expected:
        raise ValueError(f"{where}: shard {path} is corrupted (xxh64 mismatch)")


def epoch_order(ds, epoch: int) -> np.ndarray:
    """The epoch's global sample order: Streaming's resampling, then its shuffle when enabled."""
    from streaming.base.shuffle import get_shuffle

    units, small_per_big = ds.resample_streams(epoch)
    if not ds.shuffle:
        return small_per_big
    perm = get_shuffle(ds.shuffle_algo, units, ds.num_canonical_nodes, ds.shuffle_seed, epoch,
                       ds.shuffle_block_size)
    return small_per_big[perm]


def shard_path(ds, sample_id: int) -> str:
    """Where a sample's shard lives, for error messages."""
    shard_id, _ = ds.spanner[sample_id]
    stream = ds.streams[ds.stream_per_shard[shard_id]]
    reader = ds.shards[shard_id]
    name = reader.zip_data.basename if reader.zip_data else reader.raw_data.basename
    return os.path.join(stream.local, stream.split or "", name)


def read_tokens(ds, sample_id: int) -> np.ndarray:
    """One document's token ids; a decode failure becomes an error naming the shard."""
    try:
        tokens = ds[int(sample_id)]["input_ids"]
        if len(tokens) == 0:
            raise ValueError("empty sample (data_prep never writes one)")
        return tokens
    except Exception as exc:  # zstd/struct/numpy errors all mean the same thing to the user
        raise ValueError(f"shard {shard_path(ds, sample_id)} is truncated or corrupted "
                         f"(sample {sample_id}: {type(exc).__name__}: {exc})") from exc


def release_streaming_memory() -> int:
    """Close Streaming shared memory that nothing but Streaming's atexit hook still holds.

    Streaming registers every SharedMemory's cleanup with atexit, so each StreamingDataset keeps
    its shared-memory file descriptors open until the process exits, even after the dataset is
    gone. A process that builds many datasets (an in-process sweep, a test suite) runs out of
    descriptors. Returns how many blocks were released; blocks still in use are left alone.
    """
    import atexit
    import gc

    from streaming.base.shared.memory import SharedMemory

    gc.collect()
    orphans = []
    for obj in gc.get_objects():
        # References to an orphan: atexit's bound `cleanup`, get_objects' list, this loop's
        # variable and getrefcount's argument. A live dataset's attribute adds one more. (A reference count,
        # not gc.get_referrers: that scans the whole heap once per block.)
        if type(obj) is SharedMemory and sys.getrefcount(obj) <= _ORPHAN_REFS:
            orphans.append(obj)
    for shm in orphans:
        atexit.unregister(shm.cleanup)
        shm.cleanup()
    return len(orphans)


_ORPHAN_REFS = 4
