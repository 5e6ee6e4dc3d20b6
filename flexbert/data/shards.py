"""Local shard directories: checked against their index before training, and read through a
cache so that decompressing shards never writes into the dataset directory (read-only works)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import Optional


def verify_local_shards(local: str, split: str, where: str, hashes: bool = False,
                        complete: bool = True) -> None:
    """Catch missing, truncated or miscounted shards up front, naming the file.

    `complete`: every shard must be present (a stream without `remote` has nowhere to fetch from).
    """
    root = Path(local) / split
    index = root / "index.json"
    if not index.exists():
        raise ValueError(f"{where}: {index} not found (is `local` a data_prep output directory?)")
    try:
        shards = json.loads(index.read_text())["shards"]
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{where}: {index} is not a valid MDS index ({exc})") from exc
    for shard in shards:
        present = [_verify_file(root, shard[key], where, hashes) for key in ("zip_data", "raw_data")
                   if shard.get(key)]
        if complete and not any(present):
            name = (shard.get("zip_data") or shard["raw_data"])["basename"]
            raise ValueError(f"{where}: shard {root / name} is missing (listed in {index})")
        if any(present) and shard.get("format") == "mds":
            _verify_count(root, shard, where)


def _verify_file(root: Path, info: dict, where: str, hashes: bool) -> bool:
    """Size (and optionally xxh64) against the index; False when the file is absent."""
    path = root / info["basename"]
    if not path.exists():
        return False
    size = os.path.getsize(path)
    if size != info["bytes"]:
        raise ValueError(f"{where}: shard {path} is truncated or corrupted "
                         f"({size} bytes, index says {info['bytes']})")
    if hashes and "xxh64" in info.get("hashes", {}):
        _check_hash(path, info["hashes"]["xxh64"], where)
    return True


def _check_hash(path: Path, expected: str, where: str) -> None:
    import xxhash

    if xxhash.xxh64(path.read_bytes()).hexdigest() != expected:
        raise ValueError(f"{where}: shard {path} is corrupted (xxh64 mismatch)")


def _verify_count(root: Path, shard: dict, where: str) -> None:
    """An MDS shard starts with its sample count: it must equal the index's `samples`."""
    head, path = _mds_head(root, shard, where)
    if head is None:
        return
    if len(head) < 4:
        raise ValueError(f"{where}: shard {path} is truncated or corrupted (no sample count)")
    count = struct.unpack("<I", head[:4])[0]
    if count != shard.get("samples"):
        raise ValueError(f"{where}: shard {path} holds {count} samples but its index says "
                         f"{shard.get('samples')}")


def _mds_head(root: Path, shard: dict, where: str) -> tuple[Optional[bytes], Path]:
    """The first bytes of the decompressed shard: raw file, else a zstd or gzip stream."""
    raw = shard.get("raw_data")
    if raw and (root / raw["basename"]).exists():
        path = root / raw["basename"]
        with open(path, "rb") as fh:
            return fh.read(4), path
    path = root / shard["zip_data"]["basename"]
    algo = (shard.get("compression") or "").split(":")[0]
    try:
        with open(path, "rb") as fh:
            if algo == "zstd":
                import zstandard

                return zstandard.ZstdDecompressor().stream_reader(fh).read(4), path
            if algo == "gz":
                import gzip

                return gzip.GzipFile(fileobj=fh).read(4), path
    except Exception as exc:  # a bad frame header: the file is not what the index says
        raise ValueError(f"{where}: shard {path} is truncated or corrupted ({type(exc).__name__}: {exc})") from exc
    return None, path


def read_through_cache(local: str, split: str, cache_dir: Optional[str]) -> str:
    """A directory that mirrors `local/split` with links, for Streaming to use as its `local`.

    Streaming decompresses shards next to the compressed ones; pointed at the mirror, it writes
    the decompressed files there. The mirror's name hashes the source path and its index, so a
    rewritten dataset never reads stale decompressed shards. Streaming trains on whatever
    decompressed file it finds there, so the cache must be ours alone: every level is created
    0700 and refused when another user owns it or can write to it; a decompressed shard that
    does not match the index (size, hashes) and anything else not ours is removed first.
    """
    src = (Path(local) / split).resolve()
    if not (src / "index.json").is_file():
        raise ValueError(f"{src / 'index.json'} not found (is `local` a data_prep output directory?)")
    key = hashlib.sha1(str(src).encode() + (src / "index.json").read_bytes()).hexdigest()[:16]
    base = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / f"flexbert-shards-{_uid()}"
    root = base / key
    dst = root / split
    for level in (base, root, *[root / part for part in Path(split).parts]):
        _private_dir(level, "data.cache_dir" if cache_dir else "the shard cache")
    shards = json.loads((src / "index.json").read_text()).get("shards", [])
    _clean_mirror(src, dst, shards)
    for path in src.iterdir():
        if path.is_file() and not os.path.lexists(dst / path.name):
            _link(path, dst / path.name)
    return str(root)


def _private_dir(path: Path, what: str) -> None:
    """Create `path` 0700, or accept it only if it is a real directory we own that no one else
    can write to (another user could otherwise plant shards for us to train on)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{what}: {path} is not a directory (a link or file is in its place); "
                         "remove it or set data.cache_dir to a private directory")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ValueError(f"{what}: {path} belongs to user id {st.st_uid}, not to you "
                         f"({os.getuid()}); set data.cache_dir to a private directory")
    if st.st_mode & 0o022:
        raise ValueError(f"{what}: {path} is writable by other users (mode "
                         f"{stat.S_IMODE(st.st_mode):o}); chmod 700 it or set data.cache_dir to a "
                         "private directory")


def _clean_mirror(src: Path, dst: Path, shards: list) -> None:
    """Keep only links into `src` and decompressed shards that match the index; Streaming
    decompresses again whatever is removed (from the verified compressed shard)."""
    raw = {s["raw_data"]["basename"]: s["raw_data"] for s in shards
           if s.get("zip_data") and s.get("raw_data")}
    for entry in dst.iterdir():
        if entry.is_symlink():
            if Path(os.readlink(entry)).parent != src:
                entry.unlink()  # a planted link (e.g. shard.00000.mds.tmp): never write through it
        elif entry.is_file() and entry.name[:-4] in raw and entry.name.endswith(".tmp"):
            continue  # Streaming writing a shard right now (another rank); it renames when done
        elif entry.name not in raw or not entry.is_file() or not _matches(entry, raw[entry.name]):
            if entry.is_dir():
                import shutil

                shutil.rmtree(entry)
            else:
                entry.unlink()


def _matches(path: Path, info: dict) -> bool:
    if os.path.getsize(path) != info.get("bytes"):
        return False
    hashes = info.get("hashes") or {}
    if not hashes:
        return True
    data = path.read_bytes()
    for algo, expected in hashes.items():
        if algo in hashlib.algorithms_available:
            return hashlib.new(algo, data).hexdigest() == expected
        if algo.startswith("xxh"):
            import xxhash

            return getattr(xxhash, algo)(data).hexdigest() == expected
    return True


def _link(target: Path, link: Path) -> None:
    """Atomic: ranks on one node build the same mirror at once."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0
