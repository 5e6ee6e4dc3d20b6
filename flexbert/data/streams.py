"""Build the StreamingDataset behind the loader, with each stream's checked shards and sample layout.

The StreamingDataset supplies stream mixing (proportion / repeat / choose), the epoch's shuffled
sample order and random access that downloads and caches remote shards; packing and resumption
sit on top of it (see dataset.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from flexbert.data.config import DataConfig
from flexbert.data.documents import StreamFormat, shard_columns, stream_format
from flexbert.data.shards import read_through_cache, verify_local_shards


def stream_split(stream_split_name, loader_split: str) -> str:
    """A stream without its own split reads the loader's split directory."""
    return stream_split_name if stream_split_name is not None else loader_split


def build_streaming_dataset(cfg: DataConfig, split: str):
    """One StreamingDataset over every configured stream, for `split` ("train" or "val")."""
    from streaming import Stream, StreamingDataset

    streams = []
    for name, s in cfg.streams.items():
        sp = stream_split(s.split, split)
        local = s.local or None
        if cfg.verify_shards and (s.remote is None or _has_index(s.local, sp)):
            verify_local_shards(s.local, sp, f"data.streams.{name}", cfg.verify_hashes, complete=s.remote is None)
        if s.remote is None:  # decompressed shards go to a cache, never into the dataset directory
            local = read_through_cache(s.local, sp, cfg.cache_dir)
        streams.append(Stream(local=local, remote=s.remote, split=sp, proportion=s.proportion,
                              repeat=s.repeat, choose=s.choose, download_timeout=cfg.download_timeout))
    return StreamingDataset(streams=streams, shuffle=cfg.shuffle and split == "train", shuffle_seed=cfg.seed,
                            shuffle_algo=cfg.shuffle_algo, shuffle_block_size=cfg.shuffle_block_size,
                            num_canonical_nodes=cfg.num_canonical_nodes, cache_limit=cfg.cache_limit,
                            batch_size=1, allow_unsafe_types=False)


def stream_formats(ds, cfg: DataConfig, split: str) -> list[StreamFormat]:
    """Each stream's sample layout, read from its first shard's columns (fails up front)."""
    out = []
    for i, (name, s) in enumerate(cfg.streams.items()):
        source = os.path.join(s.local or s.remote, stream_split(s.split, split))
        if not ds.shards_per_stream[i]:
            raise ValueError(f"data.streams.{name}: {source} holds no shards")
        reader = ds.shards[int(ds.shard_offset_per_stream[i])]
        out.append(stream_format(name, source, s.framed, shard_columns(reader)))
    return out


def _has_index(local: str, split: str) -> bool:
    return bool(local) and (Path(local) / split / "index.json").exists()


def epoch_order(ds, epoch: int) -> np.ndarray:
    """The epoch's global sample order: Streaming's resampling, then its shuffle when enabled."""
    from streaming.base.shuffle import get_shuffle

    units, small_per_big = ds.resample_streams(epoch)
    if not ds.shuffle:
        return small_per_big
    perm = get_shuffle(ds.shuffle_algo, units, ds.num_canonical_nodes, ds.shuffle_seed, epoch,
                       ds.shuffle_block_size)
    return small_per_big[perm]


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
