"""data_prep: tokenizer, mds (accounting, round trip, sources, bad input), sample, CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_documents, write_jsonl

from data_prep import DataPrepError
from data_prep.mds import MdsOptions, build_mds
from data_prep.sources import SourceOptions, iter_documents


def _opts(tok, out, **kw):
    return MdsOptions(tokenizer=str(tok), out=str(out), progress=False, **kw)


def _read_split(path):
    from streaming import StreamingDataset

    ds = StreamingDataset(local=str(path), shuffle=False, batch_size=1)
    return [ds[i]["input_ids"] for i in range(len(ds))]


def test_tokenizer_special_tokens_and_vocab(data_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(data_tokenizer))
    assert len(tok) == 512 and len(tok) % 64 == 0
    ids = {tok.convert_ids_to_tokens(getattr(tok, f"{r}_token_id")) for r in ("cls", "sep", "pad", "mask", "unk")}
    assert ids == {"[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"}
    enc = tok("hello world").input_ids
    assert enc[0] == tok.cls_token_id and enc[-1] == tok.sep_token_id
    # transformers 5 would write `TokenizersBackend`, which transformers 4 cannot load
    conf = json.loads((data_tokenizer / "tokenizer_config.json").read_text())
    assert conf["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_tokenizer_rejects_bad_vocab(tmp_path):
    from data_prep.tokenizer import train_tokenizer

    with pytest.raises(DataPrepError, match="multiple of 64"):
        train_tokenizer(["a b c"], 1000, tmp_path / "t")


def test_mds_round_trip_and_accounting(data_corpus, data_tokenizer):
    from transformers import AutoTokenizer

    out, docs = data_corpus
    stats = json.loads((out / "stats.json").read_text())
    assert stats["documents"] == len(docs) and stats["accounting_ok"]
    assert stats["tokens_in"] == stats["tokens_written"] + sum(stats["tokens_dropped"].values())
    assert stats["documents_split"] > 0  # max_doc_tokens=512 forces splits
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    pieces = _read_split(out / "train") + _read_split(out / "val")
    assert sum(len(p) - 2 for p in pieces) == stats["tokens_written"]
    assert all(p[0] == tok.cls_token_id and p[-1] == tok.sep_token_id and len(p) <= 512 for p in pieces)
    assert pieces[0].dtype == np.uint16
    train = _read_split(out / "train")
    joined = tok.decode(np.concatenate([p[1:-1] for p in train]).tolist())
    expected = "".join(d for i, d in enumerate(docs) if not _is_val(i))
    assert joined == expected


def _is_val(i):
    from data_prep.mds import is_val

    return is_val(i, 17, 0.1)


def test_mds_drops_short_pieces_and_counts_them(tmp_path, data_tokenizer):
    docs = ["tiny.", "", "   "] + make_documents(20, seed=5, min_words=50)
    stats = build_mds([str(write_jsonl(tmp_path / "d.jsonl", docs))],
                      _opts(data_tokenizer, tmp_path / "o", min_doc_tokens=8, max_doc_tokens=64, val_fraction=0.0))
    assert stats["documents_skipped"]["empty"] == 2
    assert stats["documents_skipped"]["too_short"] >= 1
    assert stats["tokens_dropped"]["too_short"] > 0
    assert stats["tokens_in"] == stats["tokens_written"] + stats["tokens_dropped"]["too_short"]


def test_mds_workers_are_deterministic(tmp_path, data_tokenizer):
    src = write_jsonl(tmp_path / "d.jsonl", make_documents(400, seed=3))
    build_mds([str(src)], _opts(data_tokenizer, tmp_path / "w1", workers=1, chunk_docs=32))
    build_mds([str(src)], _opts(data_tokenizer, tmp_path / "w2", workers=2, chunk_docs=32))
    a, b = _read_split(tmp_path / "w1" / "train"), _read_split(tmp_path / "w2" / "train")
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_sources_text_dir_gz_parquet_and_saved_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("second")
    (tmp_path / "d" / "sub" / "a.txt").write_text("nested")
    with gzip.open(tmp_path / "x.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"body": "zipped"}) + "\n")
    pq.write_table(pa.table({"body": ["pq1", "pq2"]}), tmp_path / "x.parquet")
    datasets.Dataset.from_dict({"body": ["hf1"]}).save_to_disk(str(tmp_path / "hfds"))
    got = list(iter_documents([str(tmp_path / "d"), str(tmp_path / "x.jsonl.gz"), str(tmp_path / "x.parquet"),
                               str(tmp_path / "hfds")], SourceOptions(text_field="body")))
    assert got == ["second", "nested", "zipped", "pq1", "pq2", "hf1"]


@pytest.mark.parametrize("name,content,match", [
    ("bin.txt", b"abc\x00def", r"bin\.txt: binary file"),
    ("bad.jsonl", b'{"text": "ok"}\n{not json}\n', r"bad\.jsonl:2: not valid JSON"),
    ("nofield.jsonl", b'{"body": "x"}\n', r"nofield\.jsonl:1: missing text field 'text'"),
    ("utf.txt", b"caf\xe9 au lait", r"utf\.txt: invalid UTF-8 at byte 3"),
])
def test_bad_sources_fail_with_file_and_leave_no_output(tmp_path, data_tokenizer, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataPrepError, match=match):
        build_mds([str(tmp_path / name)], _opts(data_tokenizer, tmp_path / "out", source=SourceOptions(invalid_utf8="error")))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_invalid_utf8_replaced_and_counted(tmp_path, data_tokenizer):
    (tmp_path / "utf.txt").write_bytes(b"caf\xe9 au lait and more words here")
    stats = build_mds([str(tmp_path / "utf.txt")], _opts(data_tokenizer, tmp_path / "out", val_fraction=0.0))
    assert stats["invalid_utf8_documents"] == 1 and stats["documents_written"] == 1


def test_missing_path_and_existing_output(tmp_path, data_tokenizer):
    with pytest.raises(DataPrepError, match=r"nope\.txt: no such file"):
        build_mds([str(tmp_path / "nope.txt")], _opts(data_tokenizer, tmp_path / "out"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    (tmp_path / "a.txt").write_text("some words")
    with pytest.raises(DataPrepError, match="already exists"):
        build_mds([str(tmp_path / "a.txt")], _opts(data_tokenizer, tmp_path / "out"))


def test_tokenizer_without_mask_token_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[CLS]": 0, "[SEP]": 1, "[PAD]": 2, "a": 3}, unk_token="[PAD]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, cls_token="[CLS]", sep_token="[SEP]",
                            pad_token="[PAD]").save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "a.txt").write_text("a a a")
    with pytest.raises(DataPrepError, match=r"has no \[MASK\] token"):
        build_mds([str(tmp_path / "a.txt")], _opts(tmp_path / "tok", tmp_path / "out"))


def test_cli_mds_errors_on_stderr(tmp_path, data_tokenizer):
    (tmp_path / "bad.jsonl").write_text("{}\n")
    r = subprocess.run([sys.executable, "-m", "data_prep", "mds", str(tmp_path / "bad.jsonl"), "--tokenizer",
                        str(data_tokenizer), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode != 0 and "bad.jsonl:1: missing text field" in r.stderr


def test_cli_sample_offline(tmp_path):
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "data_prep", "sample", "--out", str(tmp_path / "s"),
                        "--max-bytes", "400000", "--no-progress"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert stats["accounting_ok"] and stats["splits"]["train"]["samples"] > 50
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(str(tmp_path / "s" / "tokenizer"))) == 4096
