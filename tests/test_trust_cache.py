"""Issue 22, point 3: the shard mirror cache is private and verified.

Streaming trains on whatever decompressed shard it finds in the mirror and decompresses through
`<shard>.tmp` with a plain open(); another local user who can write the cache could plant either.
The cache is created 0700 and refused when someone else owns it or can write to it; a planted
decompressed shard (same size, wrong bytes) and a planted `.tmp` link are removed before
Streaming sees them."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from flexbert.data.shards import read_through_cache


def _raw_info(corpus: Path) -> dict:
    return json.loads((corpus / "train" / "index.json").read_text())["shards"][0]["raw_data"]


def test_default_cache_is_created_private(sample_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = Path(read_through_cache(str(sample_corpus), "train", None))
    for level in (root.parent, root, root / "train"):
        assert oct(os.stat(level).st_mode & 0o777) == "0o700", level


def test_cache_others_can_write_or_own_is_refused(sample_corpus, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ValueError, match=rf"{shared} is writable by other users \(mode 777\)"):
        read_through_cache(str(sample_corpus), "train", str(shared))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the default path, planted as a link
    (tmp_path / f"flexbert-shards-{os.getuid()}").symlink_to(shared)
    with pytest.raises(ValueError, match=r"flexbert-shards-\d+ is not a directory"):
        read_through_cache(str(sample_corpus), "train", None)
    if os.getuid() == 0:  # only root can give a folder away
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 4242, 4242)
        with pytest.raises(ValueError, match=rf"{theirs} belongs to user id 4242"):
            read_through_cache(str(sample_corpus), "train", str(theirs))


def test_planted_shard_and_tmp_link_are_removed(sample_corpus, tmp_path):
    import zstandard

    cache = tmp_path / "cache"
    mirror = Path(read_through_cache(str(sample_corpus), "train", str(cache))) / "train"
    info = _raw_info(sample_corpus)
    planted = mirror / info["basename"]
    planted.write_bytes(b"\0" * info["bytes"])  # right size, wrong bytes
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (mirror / (info["basename"] + ".tmp")).symlink_to(victim)
    read_through_cache(str(sample_corpus), "train", str(cache))
    assert not planted.exists() and not os.path.lexists(mirror / (info["basename"] + ".tmp"))
    assert victim.read_text() == "keep me"
    # a genuine decompressed shard stays (Streaming does not decompress it again)
    zipped = (sample_corpus / "train" / (info["basename"] + ".zstd")).read_bytes()
    planted.write_bytes(zstandard.ZstdDecompressor().decompress(zipped))
    read_through_cache(str(sample_corpus), "train", str(cache))
    assert planted.is_file() and planted.stat().st_size == info["bytes"]
