"""`flexbert sweep FILE key=value`: command-line overrides reach every run (and win over the
file's); reports never show a fine-tuning score made from older pretraining. No training here:
the runs' folders are laid out by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flexbert.sweep import SweepError, load_sweep
from flexbert.sweep.report import summarize_run
from flexbert.sweep.running import drop_downstream

REPO = Path(__file__).resolve().parents[1]


def sweep_file(tmp_path: Path, corpus: Path) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nbase: {REPO / 'configs' / 'tiny.yaml'}\nout: {tmp_path / 'out'}\n"
                    f"overrides:\n  data_dir: {corpus}\n  max_duration: 20ba\n  export.hf_folder: null\n"
                    "runs:\n  - {model.norm.type: layernorm}\n  - {model.norm.type: rmsnorm}\n"
                    "finetune:\n  task: sst2\n  name: word\n")
    return path


def test_command_line_overrides_every_run_and_wins(sample_corpus, tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, sample_corpus), extra=["max_duration=7ba",
                                                                   "optimizer.lr=1e-3"])
    for run in sweep.runs:
        durations = [o for o in run.overrides if o.startswith("max_duration=")]
        assert durations == ["max_duration=7ba"]  # the command line's replaces the file's
        assert "optimizer.lr=1e-3" in run.overrides
        assert run.overrides[-1] == "autoresume=true"
    with pytest.raises(SweepError, match="command line: save_folder is set by the sweep"):
        load_sweep(sweep_file(tmp_path, sample_corpus), extra=["save_folder=/tmp/x"])
    with pytest.raises(SweepError, match="command line: 'max_duration': expected key=value"):
        load_sweep(sweep_file(tmp_path, sample_corpus), extra=["max_duration"])


def test_fine_tune_scores_from_older_pretraining_are_not_reported(sample_corpus, tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, sample_corpus))
    run = sweep.runs[0]
    result = run.folder / "finetune" / "word" / "results.json"
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps({"accuracy": 0.9}))
    (run.folder / "model").mkdir()
    checkpoint = run.folder / "ep0-ba20-rank0.pt"
    checkpoint.write_bytes(b"")
    (run.folder / "latest-rank0.pt").symlink_to(checkpoint.name)
    os.utime(result, (1_000, 1_000))  # older than the checkpoint: made from earlier pretraining
    assert "word/accuracy" not in summarize_run(sweep, run)
    os.utime(result, None)
    os.utime(checkpoint, (1_000, 1_000))
    assert summarize_run(sweep, run)["word/accuracy"] == 0.9
    assert sorted(p.name for p in drop_downstream(run)) == ["finetune", "model"]
    assert not result.exists() and not (run.folder / "model").exists()
