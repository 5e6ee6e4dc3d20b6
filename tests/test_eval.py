"""Downstream evaluation end to end on a tiny model pretrained on the sample corpus: evaluation
while training (a separate process; results in metrics.jsonl at the snapshot's tokens),
`flexbert eval` over a run's checkpoints (table, PNG, resumable), and retrieval with
sentence-transformers on a generated BEIR-style set."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from flexbert import cli
from flexbert.runtime.metrics_file import read_metrics

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
WORDS = ("the a of to and in is it for on with as was at by from this that be are or an not def "
         "class return import self print value list dict name file path data error none true "
         "false while yield lambda").split()
PEOPLE, PLACES = ("alice", "bob", "carol", "dave"), ("paris", "berlin", "tokyo", "lima")


def write_classification(folder: Path, n_train: int = 96, n_dev: int = 48) -> Path:
    """Label 1 iff the sentence contains `banana`."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for i in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
            if i % 2:
                words.insert(rng.randrange(len(words) + 1), "banana")
            rows.append(json.dumps({"text": " ".join(words), "label": i % 2}))
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def write_token_task(folder: Path, n_train: int = 96, n_dev: int = 48) -> Path:
    """People are PER, `new <place>` is a two-word LOC; everything else O (CoNLL format)."""
    rng = random.Random(1)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = []
        for _ in range(n):
            for _ in range(rng.randint(3, 8)):
                r = rng.random()
                if r < 0.15:
                    lines.append(f"{rng.choice(PEOPLE)} B-PER")
                elif r < 0.25:
                    lines += ["new B-LOC", f"{rng.choice(PLACES)} I-LOC"]
                else:
                    lines.append(f"{rng.choice(WORDS)} O")
            lines.append("")
        (folder / f"{split}.conll").write_text("\n".join(lines) + "\n")
    return folder


def write_beir(folder: Path, n_docs: int = 48) -> Path:
    """Code search over Python stdlib functions: a query is five identifiers of its function
    (different identifiers for training and test queries where the function has enough)."""
    from data_prep.sample import stdlib_documents

    docs = [d for d in stdlib_documents(400_000) if 300 < len(d) < 1500][:n_docs]
    rng = random.Random(2)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = [], [], {"train": [], "test": []}
    for i, doc in enumerate(docs):
        corpus.append({"_id": f"d{i}", "title": "", "text": doc})
        names = sorted(set(re.findall(r"\b[a-z_][a-z_]{3,}\b", doc)))
        rng.shuffle(names)
        for split, part in (("train", names[:5]), ("test", names[5:10] or names[:5])):
            queries.append({"_id": f"{split}{i}", "text": " ".join(part)})
            qrels[split].append(f"{split}{i}\td{i}\t1")
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, rows in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder


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
