"""data_prep under careless input: inputs are never read back or deleted, bad files and disks give
one line naming the path with exit 2, leftovers of killed runs go, and `--val-fraction 0` data
trains."""

import gzip
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import make_documents, write_jsonl
from data_prep.__main__ import main

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    write_jsonl(folder / "docs.jsonl", make_documents(40, seed=3))
    return folder


def _mds(tokenizer, *argv):
    return ["mds", *argv, "--tokenizer", tokenizer, "--no-progress"]


def test_output_inside_a_source_is_refused(capsys, src, data_tokenizer):
    rc, err = run(capsys, *_mds(data_tokenizer, src, "--out", src / "mds"))
    assert rc == 2 and err == (f"error: --out {src / 'mds'}: is inside the source {src} (the "
                               "output would be read as input); write it elsewhere")
    assert not (src / "mds").exists()


def test_overwriting_the_source_itself_deletes_nothing(capsys, src, data_tokenizer):
    before = sorted(p.name for p in src.iterdir())
    rc, err = run(capsys, *_mds(data_tokenizer, src, "--out", src, "--overwrite"))
    assert rc == 2 and "is inside the source" in err
    assert sorted(p.name for p in src.iterdir()) == before == ["docs.jsonl"]


def test_source_inside_the_output_is_refused(capsys, tmp_path, data_tokenizer):
    inner = tmp_path / "out" / "raw"
    inner.mkdir(parents=True)
    write_jsonl(inner / "d.jsonl", ["some words here"])
    rc, err = run(capsys, *_mds(data_tokenizer, inner, "--out", tmp_path / "out", "--overwrite"))
    assert rc == 2 and f"source {inner}: is inside --out {tmp_path / 'out'}" in err
    assert (inner / "d.jsonl").is_file()


def test_out_that_is_a_file(capsys, src, tmp_path, data_tokenizer):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    rc, err = run(capsys, *_mds(data_tokenizer, src, "--out", target))
    assert rc == 2 and err == f"error: --out {target}: is a file, not a folder"
    assert target.read_text() == "keep me"


def test_parquet_text_column_of_ints(capsys, tmp_path, data_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), path)
    rc, err = run(capsys, *_mds(data_tokenizer, path, "--out", tmp_path / "out"))
    assert rc == 2 and err == f"error: {path}: text column 'text' holds int64, not strings (set --text-field)"


def test_corrupted_jsonl_gz_names_the_file(capsys, tmp_path, data_tokenizer):
    path = tmp_path / "docs.jsonl.gz"
    data = gzip.compress(("".join('{"text": "words %d"}\n' % i for i in range(5000))).encode())
    path.write_bytes(data[: len(data) // 2])  # truncated mid-stream
    rc, err = run(capsys, *_mds(data_tokenizer, path, "--out", tmp_path / "out"))
    assert rc == 2 and err.startswith(f"error: {path}:") and "cannot read" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True)
    if done.returncode:
        pytest.skip("needs permission to mount a tmpfs (root)")


@pytest.mark.parametrize("options,reason", [("size=8k", "disk full"),
                                            ("ro,size=1m", "read-only file system")])
def test_full_or_read_only_disk_is_one_line(capsys, src, tmp_path, data_tokenizer, options, reason):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, options)
    try:
        rc, err = run(capsys, *_mds(data_tokenizer, src, "--out", disk / "out"))
        assert rc == 2 and err == f"error: {disk / 'out'}: cannot write ({reason})"
        assert os.listdir(disk) == []  # the partial folder is gone too
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_tokenizer_refuses_empty_input(capsys, tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "   "])
    rc, err = run(capsys, "tokenizer", empty, "--vocab-size", 512, "--out", tmp_path / "tok")
    assert rc == 2 and err == f"error: {empty}: no non-empty documents to train a tokenizer on"
    assert not (tmp_path / "tok").exists()


def test_tokenizer_refuses_a_non_empty_folder_without_overwrite(capsys, src, tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, err = run(capsys, "tokenizer", src, "--vocab-size", 512, "--out", out)
    assert rc == 2 and err == f"error: --out {out}: already exists and is not empty (use --overwrite)"
    assert (out / "notes.txt").read_text() == "mine"


def test_leftovers_of_dead_runs_are_removed(capsys, src, tmp_path, data_tokenizer):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}"
    alive = tmp_path / f".out.partial-{os.getppid()}"  # a running process: not ours to remove
    for folder in (stale, alive):
        folder.mkdir()
    rc, _ = run(capsys, *_mds(data_tokenizer, src, "--out", tmp_path / "out"))
    assert rc == 0 and not stale.exists() and alive.is_dir()


def test_long_lines_are_tokenized_in_segments_with_the_same_tokens(data_tokenizer):
    from tokenizers import Tokenizer

    from data_prep.sources import segments

    tok = Tokenizer.from_file(str(data_tokenizer / "tokenizer.json"))
    text = " ".join(make_documents(60, seed=5, min_words=200)) + "\n  tail   words"
    parts = segments(text, size=2000)
    assert len(parts) > 10 and "".join(parts) == text and max(map(len, parts)) <= 2000
    pieces = [i for p in parts for i in tok.encode(p, add_special_tokens=False).ids]
    assert pieces == tok.encode(text, add_special_tokens=False).ids


def test_val_fraction_zero_trains_without_evaluation(capsys, tmp_path, data_tokenizer):
    from flexbert.train.main import main as train

    docs = write_jsonl(tmp_path / "docs.jsonl", make_documents(150, seed=4, min_words=100))
    out = tmp_path / "data"
    rc, _ = run(capsys, *_mds(data_tokenizer, docs, "--out", out, "--val-fraction", 0))
    assert rc == 0 and (out / "train" / "index.json").is_file() and not (out / "val").exists()
    rc = train([TINY, f"data_dir={out}", f"save_folder={tmp_path}/run", "max_duration=2ba",
                "eval_interval=1ba", "batch.warmup_start=null", "batch.global_train_batch_size=4",
                "trainer.device_train_microbatch_size=4", "trainer.progress_bar=false",
                "callbacks.metrics_jsonl=metrics.jsonl"])
    assert rc == 0
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"trainer/batch_idx"' in metrics or "loss/train" in metrics
    assert "metrics/eval" not in metrics


def test_stale_streaming_memory_is_removed_and_live_memory_kept(tmp_path):
    """In a private folder (on the /dev/shm tmpfs when there is one), so that no other run's
    start-up cleaning of /dev/shm races this test: a stale entry no process holds goes; an entry
    this process has mapped, as a live run maps its Streaming shared memory, stays."""
    import mmap

    from flexbert.train.checkpointing.shm_cleanup import clean_stale_streaming_memory

    if not os.path.isdir("/proc"):
        pytest.skip("Linux /proc")
    shm = Path(tempfile.mkdtemp(prefix="flexbert-test-shm-",
                                dir="/dev/shm" if os.path.isdir("/dev/shm") else tmp_path))
    try:
        for name in ("987650_locals", "987651_locals", "987652_barrier"):
            (shm / name).write_bytes(b"\0" * 64)
        with open(shm / "987651_locals", "r+b") as fh, mmap.mmap(fh.fileno(), 64) as live, \
                open(shm / "987652_barrier", "rb"):  # one mapped, one only open: both in use
            removed = clean_stale_streaming_memory(str(shm))
            assert removed == ["987650_locals"] and not (shm / "987650_locals").exists()
            assert live[:1] == b"\0" and (shm / "987651_locals").exists()
        assert (shm / "987652_barrier").exists()
    finally:
        shutil.rmtree(shm, ignore_errors=True)
