"""Shards made by other tools: text (tokenized in the loader), token ids in any integer dtype or raw
int64 bytes, framing, and the up-front checks (columns, missing shards, sample counts, vocabulary,
a read-only data directory)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_documents

from flexbert.data import DataConfig, StreamConfig, build_pretraining_dataloader

S, B = 128, 8
KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "cu_seqlens")


def write_mds(out: Path, columns: dict, samples: list[dict], shard_size: int = 1 << 14) -> Path:
    """Shards written with Streaming's own writer, zstd like llm-foundry's and MosaicBERT's."""
    from streaming import MDSWriter

    with MDSWriter(out=str(out), columns=columns, compression="zstd", size_limit=shard_size) as w:
        for s in samples:
            w.write(s)
    return out


def _cfg(local, tokenizer, **kw):
    stream = {k: kw.pop(k) for k in ("framed",) if k in kw}
    return DataConfig(streams={"web": StreamConfig(local=str(local), **stream)}, tokenizer=str(tokenizer),
                      max_seq_len=S, num_workers=0, shuffle=False, **kw)


def _take(cfg, n, **kw):
    loader = build_pretraining_dataloader(cfg, device_batch_size=B, **kw)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out
    return out


def _same(a, b):
    return len(a) == len(b) and all(all(torch.equal(x[k], y[k]) for k in KEYS) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def docs():
    return make_documents(150, seed=7, max_words=120)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_tokenizer, docs):
    """The same documents through data_prep (tokenized, framed): what every layout must equal."""
    from data_prep.mds import MdsOptions, build_mds
    from conftest import write_jsonl

    root = tmp_path_factory.mktemp("ref")
    src = write_jsonl(root / "docs.jsonl", docs)
    build_mds([str(src)], MdsOptions(tokenizer=str(data_tokenizer), out=str(root / "mds"), val_fraction=0.0,
                                     max_doc_tokens=100_000, progress=False, shard_size=1 << 14))
    return root / "mds"


def _token_lists(reference: Path, tmp_path: Path) -> list[np.ndarray]:
    """The reference's documents, read through a copy (the reference stays compressed only)."""
    from streaming import StreamingDataset

    ds = StreamingDataset(remote=str(reference / "train"), local=str(tmp_path / "read"), shuffle=False, batch_size=1)
    return [ds[i]["input_ids"] for i in range(len(ds))]


def test_text_and_every_token_layout_give_the_same_batches(tmp_path, data_tokenizer, docs, reference):
    want = _take(_cfg(reference, data_tokenizer), 6)
    text = write_mds(tmp_path / "text" / "train", {"text": "str"}, [{"text": d} for d in docs])
    assert _same(_take(_cfg(text.parent, data_tokenizer), 6), want)
    framed = _token_lists(reference, tmp_path)
    layouts = {  # unframed ids in other dtypes, raw int64 bytes (older layout), framed uint16 with an id
        "int32": ({"input_ids": "ndarray:int32"}, [{"input_ids": t[1:-1].astype(np.int32)} for t in framed]),
        "bytes": ({"input_ids": "bytes"}, [{"input_ids": t[1:-1].astype(np.int64).tobytes()} for t in framed]),
        "ettin": ({"id": "str", "input_ids": "ndarray:uint16"},
                  [{"id": f"doc{i}", "input_ids": t} for i, t in enumerate(framed)]),
    }
    for name, (columns, samples) in layouts.items():
        out = write_mds(tmp_path / name / "train", columns, samples)
        assert _same(_take(_cfg(out.parent, data_tokenizer), 6), want), name


def test_framed_setting(tmp_path, data_tokenizer, reference):
    framed = [t for t in _token_lists(reference, tmp_path) if len(t) <= S][:40]  # short: no document is cut
    cls, sep = int(framed[0][0]), int(framed[0][-1])
    full = write_mds(tmp_path / "f" / "train", {"input_ids": "ndarray:uint16"}, [{"input_ids": t} for t in framed])
    bare = write_mds(tmp_path / "b" / "train", {"input_ids": "ndarray:uint16"},
                     [{"input_ids": t[1:-1]} for t in framed])

    def ends(local, framed):
        b = _take(_cfg(local, data_tokenizer, framed=framed), 1)[0]
        ids = torch.where(b["labels"] != -100, b["labels"], b["input_ids"])[b["attention_mask"].bool()]
        starts = b["cu_seqlens"][:-1].long()
        return ids[starts], ids[starts + 1], ids[b["cu_seqlens"][1:].long() - 1]

    for local in (full.parent, bare.parent):  # auto frames what lacks framing, and only that
        first, second, last = ends(local, "auto")
        assert (first == cls).all() and (second != cls).all() and (last == sep).all()
    first, second, last = ends(full.parent, "false")  # framing added to already framed documents
    assert (first == cls).all() and (second == cls).all() and (last == sep).all()
    first, _, last = ends(bare.parent, "true")  # nothing added
    assert (first != cls).all() and (last != sep).all()
    with pytest.raises(ValueError, match=r"data\.streams\.web\.framed: 'maybe' must be one of auto, true, false"):
        _take(_cfg(full.parent, data_tokenizer, framed="maybe"), 1)


def test_mixed_text_and_token_streams(tmp_path, data_tokenizer, docs, reference, monkeypatch):
    import flexbert.data.dataset as dataset_mod

    text = write_mds(tmp_path / "text" / "train", {"text": "str"}, [{"text": d} for d in docs[:60]])
    cfg = DataConfig(streams={"text": StreamConfig(local=str(text.parent), proportion=0.5),
                              "tok": StreamConfig(local=str(reference), proportion=0.5)},
                     tokenizer=str(data_tokenizer), max_seq_len=S, num_workers=0)
    streams = []
    real = dataset_mod.read_tokens
    monkeypatch.setattr(dataset_mod, "read_tokens", lambda d, sid: streams.append(d.stream_of(sid)) or real(d, sid))
    loader = build_pretraining_dataloader(cfg, device_batch_size=B)
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    expected = [next(it) for _ in range(3)]
    assert 0.3 < streams.count(0) / len(streams) < 0.7
    resumed = build_pretraining_dataloader(cfg, device_batch_size=B)
    resumed.load_state_dict(state)
    it = iter(resumed)
    assert _same([next(it) for _ in range(3)], expected)


def test_bad_shards_fail_up_front_naming_the_file(tmp_path, data_tokenizer, reference):
    out = write_mds(tmp_path / "cols" / "train", {"id": "str", "body": "str"}, [{"id": "a", "body": "b"}])
    with pytest.raises(ValueError, match=r"data\.streams\.web: the shards in .*cols/train have columns "
                                         r"\['body', 'id'\]; expected `input_ids` \(token ids\) or `text`"):
        _take(_cfg(out.parent, data_tokenizer), 1)
    oov = write_mds(tmp_path / "oov" / "train", {"input_ids": "ndarray:uint16"},
                    [{"input_ids": np.array([1, 5, 6, 9999], np.uint16)}] * 50)
    with pytest.raises(ValueError, match=r"data\.streams\.web: shard .*oov/train/shard\.00000\.mds\.zstd: sample \d+ "
                                         r"has token id 9999, outside the tokenizer's vocabulary of 512"):
        _take(_cfg(oov.parent, data_tokenizer), 1)
    data = tmp_path / "data"
    shutil.copytree(reference, data)
    index = data / "train" / "index.json"
    meta = json.loads(index.read_text())
    meta["shards"][0]["samples"] += 5
    index.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"data\.streams\.web: shard .*shard\.00000\.mds(\.zstd)? holds \d+ samples "
                                         r"but its index says \d+"):
        _take(_cfg(data, data_tokenizer), 1)
    meta["shards"][0]["samples"] -= 5
    index.write_text(json.dumps(meta))
    (data / "train" / "shard.00001.mds.zstd").unlink()
    with pytest.raises(ValueError, match=r"data\.streams\.web: shard .*shard\.00001\.mds\.zstd is missing "
                                         r"\(listed in .*index\.json\)"):
        _take(_cfg(data, data_tokenizer), 1)


def test_reading_never_writes_into_the_data_directory(tmp_path, data_tokenizer, reference):
    data = tmp_path / "data"
    shutil.copytree(reference, data)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    assert not list(data.rglob("*.mds"))  # compressed only: reading must decompress somewhere
    for p in data.rglob("*"):
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        cache = tmp_path / "cache"
        got = _take(_cfg(data, data_tokenizer, cache_dir=str(cache)), 3)
        assert _same(got, _take(_cfg(reference, data_tokenizer), 3))
        assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
        assert list(cache.rglob("*.mds"))  # the decompressed shards went to the cache
    finally:
        for p in data.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        os.chmod(data, 0o755)


def test_text_shards_train_and_resume_exactly_mixed_with_tokens(sample_corpus, tmp_path):
    """Text shards (MDSWriter, zstd) mixed half and half with a data_prep stream: 6 steps, then
    autoresume to 12, per-step losses equal to 12 straight steps."""
    from data_prep.sample import stdlib_documents

    from flexbert.runtime.metrics_file import read_metrics
    from flexbert.train.main import main

    docs = list(stdlib_documents(200_000))
    for split, part in (("train", docs[:-10]), ("val", docs[-10:])):
        write_mds(tmp_path / "text" / split, {"text": "str"}, [{"text": d} for d in part])
    repo = Path(__file__).resolve().parents[1]
    common = [str(repo / "configs" / "tiny.yaml"), f"data_dir={sample_corpus}", "run_name=t",
              "eval_interval=1000ba", "trainer.eval_subset_num_batches=1", "trainer.precision=fp32",
              "export.hf_folder=null", "trainer.console_log_interval=1000ba", "trainer.progress_bar=false",
              "save_interval=6ba", f"data.tokenizer={sample_corpus / 'tokenizer'}",
              f"data.streams.text.local={tmp_path / 'text'}", "data.streams.text.proportion=0.5",
              f"data.streams.tok.local={sample_corpus}", "data.streams.tok.proportion=0.5"]

    def losses(folder):
        return {r["step"]: r["loss"] for r in read_metrics(str(folder / "metrics.jsonl"))}

    assert main([*common, f"save_folder={tmp_path / 'straight'}", "max_duration=12ba"]) == 0
    assert main([*common, f"save_folder={tmp_path / 'resumed'}", "max_duration=6ba"]) == 0
    assert main([*common, f"save_folder={tmp_path / 'resumed'}", "max_duration=12ba", "autoresume=true"]) == 0
    straight, resumed = losses(tmp_path / "straight"), losses(tmp_path / "resumed")
    assert sorted(straight) == list(range(1, 13))
    assert resumed == straight
