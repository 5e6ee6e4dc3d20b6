"""Publishing: a folder holds exactly what was published now and no paths of this machine; phase
names cannot leave the output folder; a failing Hub never stops training or loses a checkpoint
(uploads run in the background, after the step's checkpoint is on disk, with retries)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import flexbert.io.hub as hub
from flexbert.cli import main as cli
from flexbert.config import to_yaml
from flexbert.model import FlexBertForMaskedLM
from flexbert.train.main import main
from helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkpoint(tmp_path, data_tokenizer) -> Path:
    """A weights-only checkpoint in the layout train.py writes, recording local paths."""
    cfg = tiny_config(vocab_size=512)
    model = FlexBertForMaskedLM(cfg)
    info = {"model_config": to_yaml(cfg), "phase": "p1", "run_name": "r", "step": 3,
            "tokens": 99, "tokenizer": str(data_tokenizer),
            "history": [{"init_from": str(tmp_path / "some" / "local-model")}]}
    path = tmp_path / "ckpt.pt"
    torch.save({"state": {"model": {f"model.{k}": v for k, v in model.state_dict().items()},
                          "callbacks": {"PhaseInfo": info}}}, path)
    return path


def test_republished_folder_holds_only_new_files_and_no_local_paths(checkpoint, tmp_path):
    out = tmp_path / "hf"
    assert cli(["publish", str(checkpoint), str(out)]) == 0
    (out / "pytorch_model.bin").write_bytes(b"stale")
    assert cli(["publish", str(checkpoint), str(out)]) == 0
    assert not (out / "pytorch_model.bin").exists() and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".hf.*"))  # no temporary folders left behind
    for name in ("flexbert_checkpoint.json", "README.md"):
        text = (out / name).read_text()
        assert str(tmp_path) not in text and "/tmp" not in text, name
    meta = json.loads((out / "flexbert_checkpoint.json").read_text())
    assert meta["tokenizer"] == "tokenizer" and meta["history"] == [{"init_from": "local-model"}]


def test_publish_refuses_a_folder_it_did_not_write(checkpoint, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert cli(["publish", str(checkpoint), str(tmp_path / "mine")]) == 2
    assert "not a folder written by `flexbert publish`" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_phase_and_revision_names_cannot_leave_the_folder(checkpoint, sample_corpus, tmp_path,
                                                          capsys):
    rc = main([str(REPO / "configs" / "tiny.yaml"), f"data_dir={sample_corpus}",
               f"save_folder={tmp_path / 'run'}", "phase=../../x", "callbacks.publish.enabled=true"])
    assert rc == 2 and "phase: '../../x' is not a safe name" in capsys.readouterr().err
    assert cli(["publish", str(checkpoint), str(tmp_path / "o"), "--repo-id", "me/m",
                "--revision", "../{phase}"]) == 2
    assert "revision: '../p1' is not a safe name" in capsys.readouterr().err


def test_unreachable_hub_is_retried_in_the_background_and_never_fatal(
        sample_corpus, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    calls = []

    def down(folder, repo_id, revision):
        step = int(Path(folder).name.rsplit("step", 1)[1])
        calls.append((revision, (run / f"ep0-ba{step}-rank0.pt").is_file()))
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(hub, "UPLOADER", down)
    monkeypatch.setattr(hub, "RETRY_SECONDS", (0.0,))
    rc = main([str(REPO / "configs" / "tiny.yaml"), f"data_dir={sample_corpus}",
               f"save_folder={run}", "run_name=t", "max_duration=2ba", "save_interval=1ba",
               "eval_interval=1000ba", "trainer.precision=fp32", "trainer.progress_bar=false",
               "batch.global_train_batch_size=8", "batch.warmup_start=null",
               "trainer.device_train_microbatch_size=8", "export.hf_folder=null",
               "callbacks.publish.enabled=true", "callbacks.publish.every=1ba",
               "callbacks.publish.repo_id=me/tiny"])
    assert rc == 0
    assert sorted(p.name for p in run.glob("ep*.pt")) == ["ep0-ba1-rank0.pt", "ep0-ba2-rank0.pt"]
    assert sorted(p.name for p in (run / "published").iterdir()) == ["t-step1", "t-step2"]
    # two attempts per folder, each made when that step's checkpoint was already on disk
    assert sorted(calls) == [("t-step1", True)] * 2 + [("t-step2", True)] * 2
    assert "publish: 2 upload(s) failed" in capsys.readouterr().out
