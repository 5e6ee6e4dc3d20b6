"""flexbert sweep: a 2x2 tiny grid end to end on the sample corpus (with a fine-tuning stage),
re-running does no work, an unfinished run resumes, and bad sweeps fail before anything runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from flexbert import cli, sweep as sweep_mod
from flexbert.sweep import SweepError, load_sweep, run_slug, run_sweep
from tests.test_finetune import write_contains_word_task

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

SHORT = """\
  data_dir: {corpus}
  max_duration: 20ba
  eval_interval: 10ba
  save_interval: 20ba
  batch.global_train_batch_size: 8
  batch.global_eval_batch_size: 16
  batch.warmup_start: null
  trainer.device_train_microbatch_size: 8
  scheduler.t_warmup: 2000tok
  trainer.precision: fp32
  trainer.eval_subset_num_batches: 1
  trainer.progress_bar: false
  trainer.log_to_console: false
  export.hf_folder: null
"""


def write_sweep(path: Path, corpus: Path, body: str, out: Path) -> Path:
    path.write_text(f"name: t\nbase: {TINY}\nout: {out}\noverrides:\n"
                    + SHORT.format(corpus=corpus) + body)
    return path


def metric_lines(out: Path) -> dict[str, int]:
    return {p.parent.name: len(p.read_text().splitlines()) for p in sorted(out.glob("*/metrics.jsonl"))}


GRID = """\
grid:
  model.mlp.type: [mlp, glu]
  model.norm.type: [layernorm, rmsnorm]
"""


@pytest.fixture(scope="module")
def finished(sample_corpus, tmp_path_factory):
    """The 2x2 grid run once through the CLI, with a small fine-tuning stage."""
    root = tmp_path_factory.mktemp("sweep")
    train, dev = write_contains_word_task(root, n_train=320, n_eval=100)
    body = GRID + (f"finetune:\n  task: {train}\n  eval_file: {dev}\n  name: word\n"
                   "  max_seq_len: 32\n  epochs: 1\n  lr: 2.0e-3\n  precision: fp32\n")
    path = write_sweep(root / "sweep.yaml", sample_corpus, body, root / "out")
    assert cli.main(["sweep", str(path)]) == 0
    return path, root / "out"


def read_csv(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_grid_runs_end_to_end_and_reports(finished):
    path, out = finished
    rows = read_csv(out)
    assert [r["run"] for r in rows] == ["mlp.type-mlp_norm.type-layernorm",
                                        "mlp.type-mlp_norm.type-rmsnorm",
                                        "mlp.type-glu_norm.type-layernorm",
                                        "mlp.type-glu_norm.type-rmsnorm"]
    for r in rows:
        for key in ("eval_loss", "eval_masked_acc", "tokens_per_sec", "train_loss", "word/accuracy"):
            assert math.isfinite(float(r[key])), (r["run"], key, r[key])
        assert int(r["steps"]) == 20 and int(r["tokens"]) > 0 and int(r["params"]) > 0
        assert 0 < float(r["eval_loss"]) < 9 and 0 <= float(r["eval_masked_acc"]) <= 1
        assert 0 <= float(r["word/accuracy"]) <= 1
    params = {r["run"]: int(r["params"]) for r in rows}
    # GLU's Wi is twice as wide as the MLP's at the same intermediate size.
    assert params["mlp.type-glu_norm.type-layernorm"] > params["mlp.type-mlp_norm.type-layernorm"]
    table = (out / "results.md").read_text()
    assert sum(1 for line in table.splitlines() if line.startswith("| ") and "mlp.type-" in line) == 4
    assert "results.png" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in rows:
        run = out / r["run"]
        assert (run / "sweep_done.json").is_file()
        assert (run / "model" / "flexbert.yaml").is_file()          # exported for fine-tuning
        assert json.loads((run / "finetune" / "word" / "results.json").read_text())["steps"] > 0


def test_second_run_does_no_work_and_unfinished_run_resumes(finished, capsys):
    path, out = finished
    before = metric_lines(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*.pt")}
    result = run_sweep(load_sweep(path))
    assert result["trained"] == [] and len(result["skipped"]) == 4 and result["finetuned"] == 0
    assert metric_lines(out) == before
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.pt")} == stamps

    # A run without its marker (interrupted after its last checkpoint) is finished: it gets its
    # marker and counts as finished, not trained, and the report has no wall time for it.
    victim = out / "mlp.type-glu_norm.type-rmsnorm"
    (victim / "sweep_done.json").unlink()
    capsys.readouterr()
    result = run_sweep(load_sweep(path))
    assert result["trained"] == [] and len(result["skipped"]) == 4
    printed = capsys.readouterr().out
    assert f"{victim.name}: finished (its last checkpoint is at max_duration)" in printed
    assert "0 trained, 4 already finished" in printed and f"{victim.name}: training" not in printed
    assert metric_lines(out) == before
    assert (victim / "sweep_done.json").is_file()
    table = [[c.strip().strip("*") for c in line.strip("|").split("|")]  # the best run is bold
             for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    header = next(r for r in table if "wall_s" in r)
    row = next(r for r in table if victim.name in r)
    assert row[header.index("wall_s")] == "-", row  # this launch did not time its training


def test_print_commands_lists_one_launch_per_run(sample_corpus, tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", sample_corpus, GRID, tmp_path / "out")
    assert cli.main(["sweep", str(path), "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith(f"composer train.py {TINY} ") for line in lines)
    assert "model.mlp.type=glu model.norm.type=rmsnorm run_name=mlp.type-glu_norm.type-rmsnorm" \
        in lines[3]
    assert all("autoresume=true" in line for line in lines)
    assert not (tmp_path / "out").exists()  # nothing ran
    # overrides after the flag; the command line's value replaces the file's (one per key)
    assert cli.main(["sweep", str(path), "--print-commands", "max_duration=5ba"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert all(line.count("max_duration=") == 1 and "max_duration=5ba" in line for line in lines)


@pytest.mark.parametrize("grid, run, key", [
    ("  model.mlp.type: [glu]\n  model.mlp.typo: [1, 2]\n", "run 1/2 [model.mlp.type=glu, model.mlp.typo=1]",
     "model.mlp.typo"),
    ("  model.num_layers: [2, two]\n", "run 2/2 [model.num_layers=two]", "model.num_layers"),
    ("  optimizer.lr: [1.0e-3, fast]\n", "run 2/2 [optimizer.lr=fast]", "optimizer.lr"),
])
def test_bad_sweep_fails_before_any_run(sample_corpus, tmp_path, monkeypatch, capsys, grid, run, key):
    def no_training(*args, **kwargs):
        raise AssertionError("a run started before validation finished")

    monkeypatch.setattr(sweep_mod, "train_run", no_training)
    path = write_sweep(tmp_path / "bad.yaml", sample_corpus, "grid:\n" + grid, tmp_path / "out")
    with pytest.raises(SweepError) as err:
        load_sweep(path)
    assert run in str(err.value) and key in str(err.value)
    assert cli.main(["sweep", str(path)]) == 2
    stderr = capsys.readouterr().err
    assert run in stderr and key in stderr
    assert not (tmp_path / "out").exists()


def test_unexportable_model_with_hf_export_fails_early(sample_corpus, tmp_path):
    body = "runs:\n  - {model.norm.type: layernorm}\n  - {model.norm.type: rmsnorm}\n"
    path = write_sweep(tmp_path / "s.yaml", sample_corpus, body, tmp_path / "out")
    path.write_text(path.read_text().replace("export.hf_folder: null", "export.hf_folder: hf"))
    with pytest.raises(SweepError, match=r"run 2/2 \[model.norm.type=rmsnorm\].*export.hf_folder"):
        load_sweep(path)


def test_sweep_file_errors(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text(f"base: {TINY}\ngrids: {{model.mlp.type: [glu]}}\n")
    with pytest.raises(SweepError, match="grids: unknown sweep key"):
        load_sweep(bad)
    bad.write_text(f"base: {TINY}\noverrides: {{run_name: x}}\ngrid: {{model.mlp.type: [glu]}}\n")
    with pytest.raises(SweepError, match="run_name is set by the sweep"):
        load_sweep(bad)
    bad.write_text(f"base: {TINY}\nfinetune: {{task: x.csv, epochz: 1}}\n")
    with pytest.raises(SweepError, match="finetune.epochz"):
        load_sweep(bad)


def test_run_slug_is_stable_and_safe():
    assert run_slug(["model.mlp.type=glu", "model.norm.type=rmsnorm"]) == "mlp.type-glu_norm.type-rmsnorm"
    assert run_slug([]) == "base"
    assert run_slug(["data.streams=[a, b]"]) == "data.streams-a-b"
    long = [f"model.k{i}=v{i}" for i in range(30)]
    assert run_slug(long) == run_slug(list(long)) and len(run_slug(long)) <= 80
    assert run_slug(long) != run_slug(long[:-1] + ["model.k29=other"])
