"""Remote streams: shards served over S3 by moto on loopback read exactly like local ones."""

from __future__ import annotations

import socket

import pytest
import torch

from flexbert.data import DataConfig, StreamConfig, build_pretraining_dataloader


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_endpoint(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    for key, value in {"S3_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(key, value)
    yield url
    server.stop()


def _upload(url, root, bucket="shards", prefix="corpus"):
    import boto3

    s3 = boto3.client("s3", endpoint_url=url)
    s3.create_bucket(Bucket=bucket)
    n = 0
    for split in ("train", "val"):
        for f in sorted((root / split).iterdir()):
            if f.name == "index.json" or f.name.endswith(".zstd"):
                s3.upload_file(str(f), bucket, f"{prefix}/{split}/{f.name}")
                n += 1
    return f"s3://{bucket}/{prefix}", n


def test_s3_stream_matches_local(data_corpus, s3_endpoint, tmp_path):
    out, _ = data_corpus
    remote, uploaded = _upload(s3_endpoint, out)
    assert uploaded > 2
    common = dict(max_seq_len=128, num_workers=0, tokenizer=str(out / "tokenizer"))
    local = build_pretraining_dataloader(DataConfig(streams={"web": StreamConfig(local=str(out))}, **common),
                                         device_batch_size=4)
    cache = tmp_path / "cache"
    remote_cfg = DataConfig(streams={"web": StreamConfig(local=str(cache), remote=remote)}, **common)
    streamed = build_pretraining_dataloader(remote_cfg, device_batch_size=4)
    for a, b, _ in zip(local, streamed, range(5)):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert list((cache / "train").glob("*.mds*")), "shards were downloaded into the local cache"
    val = build_pretraining_dataloader(remote_cfg, device_batch_size=4, split="val")
    assert sum(int(b["attention_mask"].sum()) for b in val) > 0
