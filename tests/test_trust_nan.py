"""A diverging run (optimizer.lr=1e6: NaN from step 2) stops with a non-zero exit naming the step,
keeps the last good checkpoint as latest, exports nothing, and metrics.jsonl shows the NaN step."""

from __future__ import annotations

import math
import os
from pathlib import Path

from flexbert.runtime.metrics_file import read_metrics
from flexbert.train.main import main

REPO = Path(__file__).resolve().parents[1]


def test_non_finite_loss_stops_the_run(sample_corpus, tmp_path, capsys):
    rc = main([str(REPO / "configs" / "tiny.yaml"), f"data_dir={sample_corpus}",
               f"save_folder={tmp_path}", "max_duration=5ba", "save_interval=1ba",
               "eval_interval=1000ba", "trainer.precision=fp32", "trainer.progress_bar=false",
               "optimizer.lr=1e6", "scheduler.t_warmup=0tok", "trainer.grad_clip_norm=0",
               "batch.global_train_batch_size=8", "batch.warmup_start=null",
               "trainer.device_train_microbatch_size=8", "export.hf_folder=hf",
               "callbacks.publish.enabled=true"])
    assert rc == 3
    err = capsys.readouterr().err
    assert "loss is nan at step 2" in err and "ep0-ba1-rank0.pt" in err
    assert sorted(p.name for p in tmp_path.glob("ep*.pt")) == ["ep0-ba1-rank0.pt"]
    assert os.readlink(tmp_path / "latest-rank0.pt") == "ep0-ba1-rank0.pt"
    assert not (tmp_path / "hf").exists() and not (tmp_path / "published").exists()
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    assert math.isfinite(rows[0]["loss"]) and math.isnan(rows[1]["loss"])
