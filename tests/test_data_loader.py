"""The packed MLM loader: batch contract, exact resumption, workers, ranks, warmup, mixtures, errors."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import make_documents, write_jsonl
from torch.utils.data import DataLoader

import flexbert.data.dataset as dataset_mod
from flexbert.data import (DataConfig, StreamConfig, build_data_spec, build_pretraining_dataloader,
                           packing_efficiency, validate_data_config)

S, B = 128, 8


def _cfg(local, **kw):
    kw.setdefault("max_seq_len", S)
    kw.setdefault("num_workers", 0)
    return DataConfig(streams={"web": StreamConfig(local=str(local))}, **kw)


def _take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _same(a, b):
    return len(a) == len(b) and all(
        all(torch.equal(x[k], y[k]) for k in ("input_ids", "labels", "attention_mask", "position_ids", "cu_seqlens"))
        and x["max_seqlen"] == y["max_seqlen"] for x, y in zip(a, b))


def test_batch_contract(data_corpus):
    out, _ = data_corpus
    loader = build_pretraining_dataloader(_cfg(out), device_batch_size=B)
    assert isinstance(loader, DataLoader) and hasattr(loader.dataset, "state_dict")
    for b in _take(loader, 6):
        assert set(b) == {"input_ids", "labels", "attention_mask", "position_ids", "cu_seqlens", "max_seqlen",
                          "indices", "prediction_indices"}
        assert b["input_ids"].shape == (B, S) and b["input_ids"].dtype == torch.long
        assert b["labels"].dtype == torch.long and b["attention_mask"].dtype == torch.long
        assert b["cu_seqlens"].dtype == torch.int32 and isinstance(b["max_seqlen"], int)
        real = b["attention_mask"].bool()
        pos = b["position_ids"][real]
        cu = b["cu_seqlens"].long()
        assert cu[-1] == real.sum() and torch.equal(torch.nonzero(pos == 0).flatten(), cu[:-1])
        assert int((cu[1:] - cu[:-1]).max()) == b["max_seqlen"] <= S
        # each row's documents end inside the row: the last real token of a row ends a document
        row_ends = torch.cumsum(real.sum(1), 0)
        assert set(row_ends.tolist()) <= set(cu.tolist())
        assert (b["labels"][~real] == -100).all() and (b["input_ids"][~real] == loader.dataset.special["pad"]).all()
        assert packing_efficiency(b) > 0.97
        # host-side indices: the model unpads and predicts sparsely without a device sync
        assert torch.equal(b["indices"], real.flatten().nonzero().squeeze(1))
        labels_T = b["labels"].flatten()[b["indices"]]
        assert torch.equal(labels_T[b["prediction_indices"]], labels_T[labels_T != -100])


def test_val_pass_returns_every_token_once(data_corpus):
    from streaming import StreamingDataset

    out, _ = data_corpus
    loader = build_pretraining_dataloader(_cfg(out), device_batch_size=B, split="val")
    seen = Counter()
    for b in loader:
        orig = torch.where(b["labels"] != -100, b["labels"], b["input_ids"])[b["attention_mask"].bool()]
        seen.update(orig.tolist())
    ds = StreamingDataset(local=str(out / "val"), shuffle=False, batch_size=1)
    expected = Counter(np.concatenate([ds[i]["input_ids"] for i in range(len(ds))]).tolist())
    assert seen == expected
    assert sum(1 for _ in loader) > 0  # a second pass starts over


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact_and_reads_nothing_consumed(data_corpus, workers):
    out, _ = data_corpus
    cfg = _cfg(out, num_workers=workers)
    full = _take(build_pretraining_dataloader(cfg, device_batch_size=B), 14)
    first = build_pretraining_dataloader(cfg, device_batch_size=B)
    assert _same(_take(first, 9), full[:9])
    state = first.state_dict()
    resumed = build_pretraining_dataloader(cfg, device_batch_size=B)
    resumed.load_state_dict(state)
    assert _same(_take(resumed, 5), full[9:])
    assert _same(_take(resumed, 1), _take(first, 6)[5:])  # both keep going in step


def test_random_order_resumes_exactly(data_corpus):
    """pack_order=random draws its order from (seed, rank, batch), so a resumed loader with a
    large buffer of waiting pieces continues with the very same batches."""
    out, _ = data_corpus
    cfg = _cfg(out, pack_order="random", pack_buffer_factor=8.0, pack_parts=1)
    full = _take(build_pretraining_dataloader(cfg, device_batch_size=B), 10)
    first = build_pretraining_dataloader(cfg, device_batch_size=B)
    _take(first, 6)
    resumed = build_pretraining_dataloader(cfg, device_batch_size=B)
    resumed.load_state_dict(first.state_dict())
    assert _same(_take(resumed, 4), full[6:])
    assert not _same(full, _take(build_pretraining_dataloader(_cfg(out, pack_parts=1), device_batch_size=B), 10))


def test_workers_do_not_change_batches(data_corpus):
    out, _ = data_corpus
    a = _take(build_pretraining_dataloader(_cfg(out, num_workers=0), device_batch_size=B), 8)
    b = _take(build_pretraining_dataloader(_cfg(out, num_workers=2), device_batch_size=B), 8)
    assert _same(a, b)


def test_resume_rereads_only_leftovers(data_corpus, monkeypatch):
    out, _ = data_corpus
    reads = []
    real_read = dataset_mod.read_tokens
    monkeypatch.setattr(dataset_mod, "read_tokens", lambda ds, sid: reads.append(int(sid)) or real_read(ds, sid))
    first = build_pretraining_dataloader(_cfg(out), device_batch_size=B)
    _take(first, 10)
    state = first.state_dict()
    read_before = set(reads)
    pending = {p[0] for part in state["ranks"][0]["parts"].values() for p in part["pending"]}
    reads.clear()
    resumed = build_pretraining_dataloader(_cfg(out), device_batch_size=B)
    resumed.load_state_dict(state)
    _take(resumed, 1)
    assert reads and not (set(reads) & (read_before - pending))


def test_composer_hooks_round_trip(data_corpus):
    out, _ = data_corpus
    cfg = _cfg(out, num_workers=2)
    first = build_pretraining_dataloader(cfg, device_batch_size=B)
    _take(first, 7)
    state = first.dataset.state_dict(7 * B, True)  # what composer's State._dataset_state_dict calls
    expected = _take(first, 3)
    resumed = build_pretraining_dataloader(cfg, device_batch_size=B)
    resumed.dataset.load_state_dict(state)
    assert _same(_take(resumed, 3), expected)
    spec = build_data_spec(resumed)
    batch = expected[0]
    assert spec.get_num_tokens_in_batch(batch) == int(batch["attention_mask"].sum())
    assert len(spec.split_batch(batch, 3)) == 3


def test_state_mismatch_is_refused(data_corpus):
    out, _ = data_corpus
    state = build_pretraining_dataloader(_cfg(out), device_batch_size=B).state_dict()
    other = build_pretraining_dataloader(_cfg(out, seed=99), device_batch_size=B)
    with pytest.raises(ValueError, match="seed=17 in the checkpoint but 99 now"):
        other.load_state_dict(state)


def test_ranks_get_disjoint_data_and_resume(data_corpus):
    out, _ = data_corpus
    reads = {0: set(), 1: set()}
    for r in (0, 1):
        loader = build_pretraining_dataloader(_cfg(out), device_batch_size=B, rank=r, world_size=2)
        _take(loader, 5)
        state = loader.state_dict()
        reads[r] = {p[0] for part in state["ranks"][r]["parts"].values() for p in part["pending"]}
        nxt = _take(loader, 2)
        again = build_pretraining_dataloader(_cfg(out), device_batch_size=B, rank=r, world_size=2)
        again.load_state_dict(state)
        assert _same(_take(again, 2), nxt)
    assert reads[0] and reads[1] and not (reads[0] & reads[1])


def test_batch_size_warmup_grows_and_resumes(data_corpus):
    out, _ = data_corpus
    cfg = _cfg(out, batch_warmup_min_rows=2, batch_warmup_tokens=10 * B * S)
    full = _take(build_pretraining_dataloader(cfg, device_batch_size=B), 40)
    rows = [b["input_ids"].shape[0] for b in full]
    assert rows[0] == 2 and rows[-1] == B and rows == sorted(rows)
    first = build_pretraining_dataloader(cfg, device_batch_size=B)
    _take(first, 11)
    resumed = build_pretraining_dataloader(cfg, device_batch_size=B)
    resumed.load_state_dict(first.state_dict())
    assert _same(_take(resumed, 29), full[11:])


def test_two_stream_mixture_proportions(tmp_path, data_tokenizer, monkeypatch):
    from data_prep.mds import MdsOptions, build_mds

    for name, seed in (("a", 10), ("b", 11)):
        src = write_jsonl(tmp_path / f"{name}.jsonl", make_documents(300, seed=seed, max_words=40))
        build_mds([str(src)], MdsOptions(tokenizer=str(data_tokenizer), out=str(tmp_path / name),
                                         val_fraction=0.0, progress=False))
    cfg = DataConfig(streams={"a": StreamConfig(local=str(tmp_path / "a"), proportion=0.8),
                              "b": StreamConfig(local=str(tmp_path / "b"), proportion=0.2)},
                     max_seq_len=S, num_workers=0, tokenizer=str(data_tokenizer))
    loader = build_pretraining_dataloader(cfg, device_batch_size=B)
    reads = []
    real_read = dataset_mod.read_tokens
    monkeypatch.setattr(dataset_mod, "read_tokens", lambda ds, sid: reads.append(int(sid)) or real_read(ds, sid))
    _take(loader, 60)
    ds = loader.dataset.ds
    streams = [ds.stream_per_shard[ds.spanner[s][0]] for s in reads]
    assert len(streams) > 400
    assert streams.count(0) / len(streams) == pytest.approx(0.8, abs=0.05)


def test_truncated_and_corrupted_shards(data_corpus, tmp_path):
    out, _ = data_corpus
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    shard = sorted((bad / "train").glob("*.zstd"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"data\.streams\.web: shard .*shard\.00000\.mds\.zstd is truncated"):
        build_pretraining_dataloader(_cfg(bad), device_batch_size=B)
    shutil.rmtree(bad)
    shutil.copytree(out, bad)
    first = sorted((bad / "train").glob("*.zstd"))[0]
    first.write_bytes(b"\x00" * first.stat().st_size)  # same size, garbage: its header does not decode
    with pytest.raises(ValueError, match=r"data\.streams\.web: shard .*shard\.00000\.mds\.zstd is truncated"):
        build_pretraining_dataloader(_cfg(bad), device_batch_size=B)
    with pytest.raises(ValueError, match="xxh64 mismatch"):
        build_pretraining_dataloader(_cfg(bad, verify_hashes=True), device_batch_size=B)


@pytest.mark.parametrize("kw,match", [
    ({"streams": {}}, r"data\.streams: at least one stream"),
    ({"streams": {"web": StreamConfig(local="x", proportion=0.0)}}, r"data\.streams\.web\.proportion: 0\.0 must be > 0"),
    ({"streams": {"web": StreamConfig(local="x", proportion=0.5, repeat=2.0)}}, r"data\.streams\.web\.repeat: set at most one"),
    ({"streams": {"a": StreamConfig(local="x", proportion=0.5), "b": StreamConfig(local="y")}},
     r"data\.streams\.b\.proportion: missing"),
    ({"streams": {"web": StreamConfig(local="x")}, "mlm_probability": 1.5}, r"data\.mlm_probability: 1\.5"),
    ({"streams": {"web": StreamConfig(local="x")}, "num_workers": 3}, r"data\.pack_parts: 4 must be .* divisible"),
    ({"streams": {"web": StreamConfig(local="x")}, "batch_warmup_min_rows": 0}, r"data\.batch_warmup_min_rows: 0"),
    ({"streams": {"web": StreamConfig(local="x")}, "pack_order": "shortest"},
     r"data\.pack_order: 'shortest' must be 'longest' or 'random'"),
])
def test_config_errors_name_the_path(kw, match):
    with pytest.raises(ValueError, match=match):
        validate_data_config(DataConfig(**kw))


def test_yaml_style_dict_and_missing_paths(data_corpus, tmp_path):
    out, _ = data_corpus
    loader = build_pretraining_dataloader({"streams": {"web": {"local": str(out)}}, "max_seq_len": S,
                                           "num_workers": 0}, device_batch_size=2)
    assert _take(loader, 1)[0]["input_ids"].shape == (2, S)
    with pytest.raises(ValueError, match=r"data\.streams\.web: .*index\.json not found"):
        build_pretraining_dataloader(_cfg(tmp_path / "missing", tokenizer=str(out / "tokenizer")), device_batch_size=B)
    with pytest.raises(ValueError, match=r"device_batch_size: 0"):
        build_pretraining_dataloader(_cfg(out), device_batch_size=0)


def test_released_streaming_memory_frees_descriptors_but_not_live_loaders(data_corpus):
    import gc
    import os

    from flexbert.data.streams import release_streaming_memory

    out, _ = data_corpus
    release_streaming_memory()
    before = len(os.listdir("/proc/self/fd"))
    live = build_pretraining_dataloader(_cfg(out, seed=3), device_batch_size=B)
    first = _take(live, 1)
    dead = build_pretraining_dataloader(_cfg(out), device_batch_size=B)
    _take(dead, 1)
    del dead
    gc.collect()
    assert release_streaming_memory() > 0
    assert release_streaming_memory() == 0  # idempotent; the live loader's blocks are kept
    assert _take(live, 1)[0]["input_ids"].shape == (B, S)
    again = build_pretraining_dataloader(_cfg(out, seed=3), device_batch_size=B)
    assert _same(first, _take(again, 1))
    del live, again
    release_streaming_memory()
    assert len(os.listdir("/proc/self/fd")) <= before + 2
