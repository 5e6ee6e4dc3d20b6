"""Issue 22, point 4: `restart=true` removes what the previous run wrote (its manifest) and
nothing else: not a user's `episodes/` or `epoch_summary.pt` beside it, and never anything
outside save_folder (`export.hf_folder=../shared_exports` holding another model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from flexbert.runtime.metrics_file import read_metrics
from flexbert.train.main import main
from tests.helpers import short_run

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def args(corpus: Path, folder: Path, *extra: str) -> list[str]:
    return short_run(corpus, folder, "max_duration=2ba", *extra)


def test_contained_never_leaves_the_folder(tmp_path):
    from flexbert.train.checkpointing.manifest import contained

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "out").symlink_to(tmp_path)  # a link inside pointing outside
    assert contained(tmp_path / "run", "hf") == tmp_path / "run" / "hf"
    for name in ("../shared", "/etc", "", ".", "a/../../x", "out/x"):
        assert contained(tmp_path / "run", name) is None, name


def test_restart_removes_only_what_the_run_wrote(sample_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(args(sample_corpus, run, "export.hf_folder=hf")) == 0
    (run / "episodes").mkdir()  # the user's own files beside the run
    (run / "episodes" / "e1.txt").write_text("mine")
    (run / "epoch_summary.pt").write_bytes(b"mine")
    other = tmp_path / "shared_exports" / "other-model"
    other.mkdir(parents=True)
    (other / "model.safetensors").write_bytes(b"another model")
    capsys.readouterr()
    assert main(args(sample_corpus, run, "restart=true", "export.hf_folder=../shared_exports",
                     "max_duration=1ba", "save_interval=1ba")) == 0
    out = capsys.readouterr().out
    assert "restart=true: removing" in out and "ep0-ba2-rank0.pt" in out and "hf" in out
    assert (run / "episodes" / "e1.txt").read_text() == "mine"
    assert (run / "epoch_summary.pt").read_bytes() == b"mine"
    assert (other / "model.safetensors").read_bytes() == b"another model"
    assert not (run / "hf").exists() and not (run / "ep0-ba2-rank0.pt").exists()
    assert [r["step"] for r in read_metrics(str(run / "metrics.jsonl"))] == [1]
    assert os.readlink(run / "latest-rank0.pt") == "ep0-ba1-rank0.pt"
    wrote = json.loads((run / ".flexbert-run.json").read_text())["wrote"]
    assert {"ep0-ba1-rank0.pt", "latest-rank0.pt", "metrics.jsonl", "loss.png"} <= set(wrote)
    assert not any(".." in name for name in wrote)  # ../shared_exports is never recorded


def test_a_run_without_manifest_loses_only_its_checkpoints(tmp_path):
    """Folders from before manifests: checkpoints and latest links by their exact names."""
    from omegaconf import OmegaConf

    from flexbert.train.checkpointing.launch_plan import run_outputs

    run = tmp_path / "run"
    run.mkdir()
    for name in ("ep0-ba2-rank0.pt", "ep1-ba4-rank1.pt", "epoch_summary.pt", "ep0-notes.pt"):
        (run / name).write_bytes(b"x")
    (run / "episodes").mkdir()
    (run / "latest-rank0.pt").symlink_to("ep0-ba2-rank0.pt")
    (tmp_path / "shared_exports").mkdir()
    cfg = OmegaConf.create({"callbacks": {"metrics_jsonl": "metrics.jsonl"},
                            "export": {"hf_folder": "../shared_exports"}})
    assert [p.name for p in run_outputs(cfg, str(run))] == [
        "ep0-ba2-rank0.pt", "ep1-ba4-rank1.pt", "latest-rank0.pt"]
