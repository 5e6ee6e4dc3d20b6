"""Resuming the loader on a different rank count: every sample of the epoch is read exactly once."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import make_documents, write_jsonl

from flexbert.data import DataConfig, StreamConfig, build_pretraining_dataloader
from flexbert.data.dataset import Partition
from flexbert.data.elastic import resplit

S, B = 128, 8


def _cfg(local, **kw):
    return DataConfig(streams={"web": StreamConfig(local=str(local))}, max_seq_len=S, num_workers=0, **kw)


@pytest.fixture(scope="module")
def small(tmp_path_factory, data_tokenizer):
    """About 400 short documents: an epoch is a few dozen steps, so the test sees one end."""
    from data_prep.mds import MdsOptions, build_mds

    root = tmp_path_factory.mktemp("elastic")
    src = write_jsonl(root / "docs.jsonl", make_documents(400, seed=5, max_words=80))
    build_mds([str(src)], MdsOptions(tokenizer=str(data_tokenizer), out=str(root / "mds"), val_fraction=0.0,
                                     progress=False, shard_size=1 << 14))
    return root / "mds"


@pytest.fixture
def taken(monkeypatch):
    """(epoch, sample id) of every document a partition takes from the epoch order."""
    seen: list = []
    real = Partition._next_sid

    def record(self):
        out = real(self)
        if out is not None and self.infinite:  # train partitions only (eval reads its own split)
            seen.append(out)
        return out

    monkeypatch.setattr(Partition, "_next_sid", record)
    return seen


def _loaders(cfg, world, state=None):
    out = []
    for r in range(world):
        loader = build_pretraining_dataloader(cfg, device_batch_size=2 * B // world, rank=r, world_size=world)
        if state is not None:
            loader.load_state_dict(state)
        out.append(loader)
    return out


def _run(loaders, n):
    """n steps on every rank; the merged state is what rank 0's checkpoint would hold."""
    its = [iter(loader) for loader in loaders]
    for _ in range(n):
        for it in its:
            next(it)
    states = [loader.state_dict() for loader in loaders]
    merged = states[0]
    merged["ranks"] = [s["ranks"][r] for r, s in enumerate(states)]
    return merged


def _epoch_done(loaders, epoch):
    parts = [p for loader in loaders for p in loader.dataset.progress["parts"].values()]
    return all(p["epoch"] > epoch and not p["carry"] for p in parts)


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_rank_change_reads_every_sample_of_the_epoch_once(small, taken, before, after):
    out = small
    cfg = _cfg(out, pack_parts=2)
    state = _run(_loaders(cfg, before), 3)
    n = int(_loaders(cfg, 1)[0].dataset.ds.epoch_size)
    resumed = _loaders(cfg, after, state)
    steps = 0
    while not _epoch_done(resumed, 0):
        _run(resumed, 1)
        steps += 1
        assert steps < 100
    counts = Counter(sid for e, sid in taken if e == 0)
    assert len(counts) == n and set(counts.values()) == {1}
    pending = sorted(map(tuple, (p for r in state["ranks"] for part in r["parts"].values() for p in part["pending"])))
    new = resplit(state, after, 2, lambda e: n)
    dealt = sorted(map(tuple, (p for r in new for part in r["parts"].values() for p in part["pending"])))
    assert pending and dealt == pending  # leftover pieces carried over, none lost or doubled


def test_warmup_continues_from_the_tokens_served(data_corpus):
    out, _ = data_corpus
    cfg = _cfg(out, batch_warmup_min_rows=2, batch_warmup_tokens=40 * B * S)
    state = _run(_loaders(cfg, 2), 6)
    resumed = _loaders(cfg, 1, state)[0]
    sched = resumed.dataset.schedule
    assert sched.tokens_before(6) == state["tokens_seen_slots"] > 0
    tokens = state["tokens_seen_slots"]
    assert sched.rows(6) == 2 + (2 * B - 2) * tokens // (40 * B * S) < 2 * B  # mid-ramp, not restarted
    first = next(iter(resumed))
    assert first["input_ids"].shape[0] == sched.rows(6)


def test_same_layout_resume_is_unchanged(data_corpus):
    out, _ = data_corpus
    cfg = _cfg(out, pack_parts=2)
    state = _run(_loaders(cfg, 2), 4)
    again = _loaders(cfg, 2, state)
    assert [a.dataset.progress for a in again] == [state["ranks"][r] for r in range(2)]


TAKEN = """
import os, sys
import flexbert.data.dataset as dataset_mod
real = dataset_mod.Partition._next_sid
def record(self):
    out = real(self)
    if out is not None and self.infinite:  # train partitions only (eval reads its own split)
        with open(os.path.join(os.environ["RECORD_DIR"], f"taken-{os.environ['RANK']}"), "a") as f:
            f.write(f"{out[0]} {out[1]}\\n")
    return out
dataset_mod.Partition._next_sid = record
from flexbert.train.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_composer_two_ranks_resume_on_one(sample_corpus, tmp_path, taken):
    """`composer -n 2` for 2 steps, then one process resumes its checkpoint to 8 steps: the token
    clock and learning rate continue, no sample of the epoch is taken twice across the change."""
    import json
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    common = [str(repo / "configs" / "tiny.yaml"), f"data_dir={sample_corpus}", "run_name=t",
              "eval_interval=1000ba", "trainer.eval_subset_num_batches=1", "trainer.precision=fp32",
              "export.hf_folder=null", "trainer.console_log_interval=1000ba", "trainer.progress_bar=false",
              "save_interval=2ba"]
    script = tmp_path / "taken.py"
    script.write_text(TAKEN)
    env = dict(os.environ, RECORD_DIR=str(tmp_path), PYTHONPATH=str(repo))
    proc = subprocess.run(["composer", "-n", "2", str(script), *common, f"save_folder={tmp_path / 'two'}",
                           "max_duration=2ba"], env=env, cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    from flexbert.train.main import main

    assert main([*common, f"save_folder={tmp_path / 'one'}", "max_duration=8ba",
                 f"load_path={tmp_path / 'two' / 'ep0-ba2-rank0.pt'}"]) == 0
    before = [tuple(map(int, line.split())) for r in (0, 1) for line in (tmp_path / f"taken-{r}").read_text().splitlines()]
    assert before and taken and len(set(before) | set(taken)) == len(before) + len(taken)
    rows = [json.loads(line) for name in ("two", "one") for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[2]["tokens"] > rows[1]["tokens"] > rows[0]["tokens"] > 0  # the clock went on from step 2
    assert rows[3]["lr"] - rows[2]["lr"] == pytest.approx(rows[1]["lr"] - rows[0]["lr"], rel=0.2)
