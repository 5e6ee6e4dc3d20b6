"""Downstream evaluation end to end on a tiny model pretrained on the sample corpus: evaluation
while training (a separate process; results in metrics.jsonl at the snapshot's tokens),
`flexbert eval` over a run's checkpoints (table, PNG, resumable), and retrieval with
sentence-transformers on a generated BEIR-style set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flexbert import cli
from flexbert.evaluation.example_tasks import write_beir, write_classification, write_token_task
from flexbert.runtime.metrics_file import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
FAST = {"epochs": 2, "lr": 0.002, "max_seq_len": 32, "batch_size": 16, "precision": "fp32"}


@pytest.fixture(scope="module")
def run(sample_corpus, tmp_path_factory):
    """12 tiny MLM steps, checkpoints every 4 batches, downstream evaluation (a classification
    and a token-classification task, two seeds) every 6 batches in a separate process."""
    from flexbert.train.main import main

    root = tmp_path_factory.mktemp("evalrun")
    cls, ner = write_classification(root / "tasks" / "banana"), write_token_task(root / "tasks" / "ner")
    folder = root / "run"
    options = "{" + ", ".join(f"{k}: {v}" for k, v in FAST.items()) + "}"
    assert main([TINY, f"data_dir={sample_corpus}", f"save_folder={folder}", "run_name=ev",
                 "max_duration=12ba", "save_interval=4ba", "eval_interval=1000ba",
                 "save_num_checkpoints_to_keep=-1", "batch.warmup_start=null",
                 "batch.global_train_batch_size=8", "trainer.device_train_microbatch_size=8",
                 "scheduler.t_warmup=2000tok", "trainer.precision=fp32",
                 "trainer.progress_bar=false", "trainer.log_to_console=false",
                 "callbacks.downstream_eval.enabled=true", "callbacks.downstream_eval.every=6ba",
                 f"callbacks.downstream_eval.tasks=[{cls},{ner}]",
                 "callbacks.downstream_eval.seeds=[1,2]",
                 f"callbacks.downstream_eval.options={options}"]) == 0
    return folder, cls, ner


def test_downstream_eval_while_training(run):
    folder, _, _ = run
    rows = {r["step"]: r for r in read_metrics(str(folder / "metrics.jsonl"))}
    for step in (6, 12):
        row = rows[step]
        assert row["loss"] > 0  # the downstream row merged into the training row of its step
        for key in ("downstream/banana/accuracy", "downstream/ner/entity_f1",
                    "downstream/banana/accuracy_std"):
            assert key in row, (step, sorted(row))
        results = [json.loads(x) for x in (folder / "downstream" / f"step{step}" / "results.jsonl")
                   .read_text().splitlines()]
        assert sorted((r["task"], r["seed"]) for r in results) == [
            ("banana", 1), ("banana", 2), ("ner", 1), ("ner", 2)]
        assert {r["tokens"] for r in results} == {row["tokens"]}  # evaluated at that checkpoint
        accs = [r["accuracy"] for r in results if r["task"] == "banana"]
        assert row["downstream/banana/accuracy"] == pytest.approx(sum(accs) / 2)
    assert rows[6]["tokens"] < rows[12]["tokens"]
    # Training did not wait: the step after the launch finished before the evaluation did.
    assert rows[7]["time"] < rows[6]["downstream/finished_at"]
    assert rows[6]["downstream/launched_at"] < rows[7]["time"]


def test_eval_over_three_checkpoints_then_nothing_to_do(run, tmp_path, capsys):
    folder, cls, _ = run
    out = tmp_path / "eval"
    args = ["eval", str(folder), "--tasks", str(cls), "--out", str(out),
            *[x for k, v in FAST.items() for x in (f"--{k.replace('_', '-')}", str(v))]]
    assert cli.main(args) == 0
    assert "3 runs done, 0 already finished" in capsys.readouterr().out
    table = (out / "table.csv").read_text().splitlines()
    rows = [line.split(",") for line in table[1:] if ",banana,accuracy," in line]
    assert [r[0] for r in rows] == ["run/ep0-ba12", "run/ep0-ba4", "run/ep0-ba8"]
    assert sorted(int(r[2]) for r in rows) == sorted({int(r[2]) for r in rows})  # 3 token counts
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| run/ep0-ba4 |" in (out / "table.md").read_text()
    before = (out / "results.jsonl").read_text()
    assert cli.main(args) == 0
    assert "0 runs done, 3 already finished" in capsys.readouterr().out
    assert (out / "results.jsonl").read_text() == before


def test_retrieval_beats_untrained_baseline_and_loads_in_sentence_transformers(run, tmp_path):
    from sentence_transformers import SentenceTransformer

    from flexbert.finetune import FinetuneConfig, finetune

    folder, _, _ = run
    beir = write_beir(tmp_path / "code-search")
    result = finetune(FinetuneConfig(model=str(folder / "hf"), task=str(beir), epochs=4,
                                     lr=1e-3, batch_size=16, max_seq_len=64, seed=3))
    assert result["kind"] == "retrieval" and result["task"] == "code-search"
    assert result["ndcg@10"] > result["baseline_ndcg@10"] + 0.05, result
    assert 0 < result["mrr@10"] <= 1
    model = SentenceTransformer(str(folder / "hf"), device="cpu")  # the folder as train.py wrote it
    vectors = model.encode(["def read(path): return open(path).read()", "import os"])
    assert vectors.shape == (2, 64)


def test_resumed_run_adopts_unrecorded_evaluations(run, tmp_path):
    """Issue 22, point 6: training killed while step 6's evaluation ran (its row never reached
    metrics.jsonl, one of its four runs unfinished): the resumed run adopts it, keeping the
    three finished runs, redoing the missing one and recording the row."""
    import shutil

    from composer.loggers import Logger

    from flexbert.train.callbacks.downstream_eval import DownstreamEval
    from flexbert.runtime.metrics_file import MetricsJSONL

    folder, cls, ner = run
    copy = tmp_path / "run"
    shutil.copytree(folder, copy, symlinks=True)
    metrics = copy / "metrics.jsonl"
    kept = [line for line in metrics.read_text().splitlines()
            if not ('"downstream/launched_at"' in line and json.loads(line)["step"] == 6)]
    metrics.write_text("\n".join(kept) + "\n")
    results = copy / "downstream" / "step6" / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:3]) + "\n")  # the fourth run was killed
    finished = {json.loads(x)["finished"] for x in lines[:3]}
    cb = DownstreamEval(str(copy / "downstream"), [str(cls), str(ner)], [1, 2], None, False,
                        dict(FAST))
    logger = Logger(state=None, destinations=[MetricsJSONL(str(metrics))])
    cb._adopt(8, logger)  # resumed from the step-8 checkpoint
    assert [p.step for p in cb.pending] == [6]  # step 12 is past the resume point: redone later
    cb._wait(logger, 600)
    assert not cb.pending
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    assert sorted((r["task"], r["seed"]) for r in rows) == [
        ("banana", 1), ("banana", 2), ("ner", 1), ("ner", 2)]
    assert finished <= {r["finished"] for r in rows}  # the finished runs were kept, not redone
    row = {r["step"]: r for r in read_metrics(str(metrics))}[6]
    assert "downstream/banana/accuracy" in row and "downstream/ner/entity_f1" in row


def test_evaluation_child_dies_with_its_run(tmp_path):
    """No evaluation outlives a SIGKILLed run: the child is started with a parent-death signal."""
    import signal
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from flexbert.train.callbacks.downstream_eval import _die_with_parent\n"
        "c = subprocess.Popen(['sleep', '120'], start_new_session=True, "
        "preexec_fn=_die_with_parent)\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(100):  # a bound, not a measurement: the signal is delivered at once
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:  # reaped by init shortly after it dies
            if f.read().split(") ")[1].startswith("Z"):
                break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the evaluation child outlived its killed run")
