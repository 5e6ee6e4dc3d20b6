"""Relaunching into a save_folder that already holds a run: no resume with the wrong state, no
restart from step 0 while a checkpoint loads, a finished run reported (and its HF export
written), one key to start over, retention over every checkpoint in the folder. Most cases stop
before anything is built, so one 4-step run serves them all."""

from __future__ import annotations

import os
import json
import shutil
from pathlib import Path

import pytest

from flexbert.runtime.metrics_file import read_metrics
from flexbert.train.main import main
from tests.helpers import short_run

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def args(corpus: Path, folder: Path, *extra: str) -> list[str]:
    return short_run(corpus, folder, "export.hf_folder=null", *extra)


@pytest.fixture(scope="module")
def done(sample_corpus, tmp_path_factory) -> Path:
    """A finished 4-step run: checkpoints at steps 2 and 4."""
    folder = tmp_path_factory.mktemp("done") / "run"
    assert main(args(sample_corpus, folder, "max_duration=4ba")) == 0
    return folder


@pytest.fixture
def run(done, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(done, copy, symlinks=True)
    return copy


def test_finished_run_relaunched_exits_0_and_writes_the_hf_export(sample_corpus, run, capsys):
    assert main(args(sample_corpus, run, "max_duration=4ba", "export.hf_folder=hf")) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and "restart=true" in out
    assert (run / "hf" / "model.safetensors").is_file() and (run / "hf" / "tokenizer.json").is_file()
    assert len(read_metrics(str(run / "metrics.jsonl"))) == 4  # nothing trained again
    # autoresume on a finished run: the same answer, not Composer's "No training would occur"
    assert main(args(sample_corpus, run, "max_duration=4ba", "autoresume=true")) == 0


@pytest.mark.parametrize("extra,message", [
    (["max_duration=2ba"], "trained to batch 4, past max_duration=2ba; set restart=true"),
    (["max_duration=6ba"], "unfinished run (batch 4 of max_duration=6ba); set autoresume=true"),
    (["max_duration=6ba", "autoresume=true", "model.num_layers=2"],
     "model.num_layers: checkpoint 4, recipe 2"),
    (["max_duration=6ba", "autoresume=true", "model.position.global_theta=160000"],
     "model.position.global_theta: checkpoint 10000.0, recipe 160000.0"),
    (["max_duration=6ba", "autoresume=true", "data.max_seq_len=64"],
     "data.max_seq_len: checkpoint 128, recipe 64"),
])
def test_relaunch_refusals_are_one_line(sample_corpus, run, capsys, extra, message):
    before = sorted(p.name for p in run.iterdir())
    assert main(args(sample_corpus, run, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "FileExistsError" not in err and sorted(p.name for p in run.iterdir()) == before


def test_other_data_or_tokenizer_is_refused(sample_corpus, run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(sample_corpus, other)
    index = other / "train" / "index.json"
    index.write_text(index.read_text() + "\n")  # same shards, another index: another data set
    assert main(args(other, run, "max_duration=6ba", "autoresume=true")) == 2
    err = capsys.readouterr().err
    assert "data.streams.main.train_index" in err and "tokenizer_sha256" not in err
    tok = json.loads((sample_corpus / "tokenizer" / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]  # two ordinary tokens swap ids: same size and special ids
    last, before = (next(k for k, v in vocab.items() if v == i)
                    for i in (len(vocab) - 1, len(vocab) - 2))
    vocab[last], vocab[before] = vocab[before], vocab[last]
    (other / "tokenizer" / "tokenizer.json").write_text(json.dumps(tok))
    assert main(args(other, run, "max_duration=6ba", "autoresume=true")) == 2
    assert "tokenizer_sha256" in capsys.readouterr().err


def test_load_path_refuses_another_model_unless_a_new_phase(sample_corpus, done, tmp_path, capsys):
    ckpt = done / "ep0-ba4-rank0.pt"
    assert main(args(sample_corpus, tmp_path / "a", f"load_path={ckpt}", "max_duration=6ba",
                     "model.attention.local_window=8")) == 2
    assert "model.attention.local_window: checkpoint 16, recipe 8" in capsys.readouterr().err
    # reset_time (a new phase) may change RoPE on purpose: the check passes, training starts
    # (stopped here by an unrelated, cheaper error: a batch size that does not split)
    from flexbert.train.recipe.load import load_recipe
    from flexbert.train.checkpointing.launch_plan import check_load_path

    recipe = load_recipe(TINY, args(sample_corpus, tmp_path / "b", f"load_path={ckpt}",
                                    "reset_time=true", "max_duration=2ba",
                                    "model.position.global_theta=160000")[1:])
    check_load_path(recipe)


def test_broken_latest_resumes_from_newest_loadable_and_retention_counts_all(
        sample_corpus, run, capsys):
    """latest-rank0.pt dangling and the newest checkpoint truncated: resume from step 2 (saying
    which files were skipped), not from step 0; keep=2 then leaves exactly the two newest."""
    (run / "latest-rank0.pt").unlink()
    os.symlink("ep0-ba9-rank0.pt", run / "latest-rank0.pt")
    newest = run / "ep0-ba4-rank0.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    assert main(args(sample_corpus, run, "max_duration=6ba", "autoresume=true",
                     "save_num_checkpoints_to_keep=2")) == 0
    out = capsys.readouterr().out
    assert "skipped latest-rank0.pt: dangling link to ep0-ba9-rank0.pt" in out
    assert "ep0-ba4-rank0.pt: truncated" in out and "using ep0-ba2-rank0.pt" in out
    rows = read_metrics(str(run / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in run.glob("ep*.pt")) == ["ep0-ba4-rank0.pt", "ep0-ba6-rank0.pt"]
    assert os.readlink(run / "latest-rank0.pt") == "ep0-ba6-rank0.pt"


def test_restart_clears_the_old_run(sample_corpus, run, capsys):
    assert main(args(sample_corpus, run, "max_duration=2ba", "restart=true")) == 0
    out = capsys.readouterr().out
    assert "restart=true: removing" in out and "ep0-ba4-rank0.pt" in out and "metrics.jsonl" in out
    assert sorted(p.name for p in run.glob("ep*.pt")) == ["ep0-ba2-rank0.pt"]
    assert [r["step"] for r in read_metrics(str(run / "metrics.jsonl"))] == [1, 2]
    with open(run / "metrics.jsonl") as f:
        assert len(f.readlines()) == 2  # a new file, not appended to the old one


def test_refusals_offer_another_save_folder(sample_corpus, run, capsys):
    """A second walk-through into a folder that holds a run: besides restart=true (which deletes
    it), each refusal names a free save_folder that keeps it."""
    for extra in (["max_duration=2ba"], ["max_duration=6ba"], ["max_duration=6ba", "model.num_layers=2"]):
        assert main(args(sample_corpus, run, *extra)) == 2
        err = capsys.readouterr().err
        assert f"save_folder={run}-2 to keep it" in err and len(err.strip().splitlines()) == 1, err
    assert main(args(sample_corpus, run, "max_duration=4ba")) == 0
    assert f"save_folder={run}-2 (keeps it)" in capsys.readouterr().out


def test_run_id_is_kept_by_a_relaunch_and_renewed_by_restart(sample_corpus, run, capsys):
    """`flexbert eval` keys results by this id (a restarted run reuses ep0-ba2 and the name)."""
    from flexbert.io.run_identity import read_run_id

    first = read_run_id(run)
    assert first and main(args(sample_corpus, run, "max_duration=4ba")) == 0  # finished: kept
    assert read_run_id(run) == first
    assert main(args(sample_corpus, run, "max_duration=2ba", "restart=true")) == 0
    assert read_run_id(run) not in (None, first)
