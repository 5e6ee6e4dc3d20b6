"""A newcomer's first commands, as README.md and docs/ write them, in a fresh folder (the repo's
configs/ and train.py, nothing prepared): `python -m data_prep sample`, the main training job (a
shorter max_duration to stay fast), then CPU-sized commands copied from the docs. Each command
string is checked to appear verbatim in its document, so the list cannot drift from the docs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB = "python train.py configs/tiny.yaml"
SAMPLE = "python -m data_prep sample --out runs/sample"
# (document, command) run in the fresh folder after the main job; CPU-sized, offline.
DOC_COMMANDS = [
    ("README.md", "flexbert components"),
    ("docs/training.md", "python train.py --help"),
    ("docs/sweeps.md", "flexbert sweep configs/ablations/glu_x_norm.yaml --print-commands"),
    ("docs/performance.md", "python bench/loss.py --quick"),
    ("docs/data.md", "python -m data_prep sample --help"),
    ("docs/training.md", "flexbert from-hf runs/flexbert-tiny/hf runs/flexbert-tiny/model"),
    ("docs/training.md", "flexbert to-hf runs/flexbert-tiny/model runs/flexbert-tiny/hf-again"),
]


def documented(doc: str, command: str) -> bool:
    return command in (REPO / doc).read_text()


def shell(command: str, cwd: Path, log: Path | None = None) -> subprocess.CompletedProcess:
    """Run a documented command the way a user types it; `flexbert` and `python` resolve to this
    interpreter and this checkout."""
    argv = shlex.split(command)
    if argv[0] == "flexbert":
        argv = [sys.executable, "-m", "flexbert.cli", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = open(log, "w") if log else subprocess.PIPE
    try:
        return subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                              text=True, timeout=900)
    finally:
        if log:
            out.close()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A checkout-like folder: configs/, train.py and bench/, no runs/."""
    root = tmp_path_factory.mktemp("newcomer")
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "bench", root / "bench", ignore=shutil.ignore_patterns("results"))
    shutil.copy(REPO / "train.py", root / "train.py")
    return root


@pytest.fixture(scope="module")
def main_job(fresh) -> tuple[Path, str]:
    readme = (REPO / "README.md").read_text()
    assert SAMPLE in readme and MAIN_JOB in readme
    assert shell(SAMPLE, fresh).returncode == 0
    log = fresh / "train.log"
    proc = shell(f"{MAIN_JOB} max_duration=24ba eval_interval=200ba", fresh, log)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return fresh, text


def test_main_job_prints_a_short_console_and_a_summary(main_job):
    fresh, text = main_job
    run = fresh / "runs" / "flexbert-tiny"
    # 24 steps at the recipe's 50-step console interval: one metrics line, one eval, the summary.
    assert len(text.encode()) < 5_000, text
    assert "Traceback" not in text and "Config:" not in text and "duplicate logs" not in text
    assert re.search(r"^step 24/24 100% \| tok [\d.]+k \| loss \d+\.\d{4}", text, re.M), text
    assert "eval at step 24: MaskedAccuracy" in text
    summary = text[text.index("== run flexbert-tiny finished"):]
    for key in ("wall time", "steps", "tokens", "train loss", "eval loss", "tokens/s",
                "checkpoints", "metrics", "loss plot", "hf folder"):
        assert re.search(rf"^  {key} +\S", summary, re.M), key
    assert "runs/flexbert-tiny/metrics.jsonl" in summary
    for name in ("metrics.jsonl", "loss.png", "latest-rank0.pt", "hf/config.json",
                 "hf/tokenizer.json"):
        assert (run / name).exists(), name


def run_in_process(command: str, monkeypatch) -> int:
    """A documented command through its own entry point, in this process (no new interpreter
    and torch import per command)."""
    import runpy

    argv = shlex.split(command)
    if argv[0] == "flexbert":
        from flexbert.cli import main as flexbert_main

        return flexbert_main(argv[1:])
    if argv[:3] == ["python", "-m", "data_prep"]:
        from data_prep.__main__ import main as data_prep_main

        entry = lambda: data_prep_main(argv[3:])  # noqa: E731
    elif argv[:2] == ["python", "train.py"]:
        from flexbert.train.main import main as train_main

        entry = lambda: train_main(argv[2:])  # noqa: E731
    else:
        assert argv[0] == "python" and argv[1].endswith(".py"), command
        monkeypatch.setattr(sys, "argv", argv[1:])
        monkeypatch.syspath_prepend(str(Path(argv[1]).resolve().parent))  # as `python x.py` does
        entry = lambda: runpy.run_path(argv[1], run_name="__main__") and 0  # noqa: E731
    try:
        return int(entry() or 0)
    except SystemExit as stop:  # --help exits 0
        return int(stop.code or 0)


def test_documented_commands_run(main_job, monkeypatch, capsys):
    """CPU-sized commands from the docs, verbatim, in the folder the main job left."""
    fresh, _ = main_job
    monkeypatch.chdir(fresh)
    run = fresh / "runs" / "flexbert-tiny"
    for doc, command in DOC_COMMANDS:
        assert documented(doc, command), f"{doc} no longer says `{command}`"
        code = run_in_process(command, monkeypatch)
        out = capsys.readouterr().out
        assert code == 0, f"{doc}: `{command}` exited {code}:\n{out[-2000:]}"
        if command.endswith("--help"):
            assert "(default: " in out or " = " in out, out
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(run / "model").mask_token == "[MASK]"  # from-hf kept it
    assert AutoTokenizer.from_pretrained(run / "hf-again").mask_token == "[MASK]"
    assert not (fresh / "bench" / "results").exists(), "a --quick bench wrote results"


def test_readme_commands_run_a_second_time(main_job):
    """The same two commands again, as a user re-running the README does: the sample corpus is
    reused and the finished run is reported as finished (exit 0, pointing at its outputs)."""
    fresh, _ = main_job
    before = (fresh / "runs" / "flexbert-tiny" / "metrics.jsonl").read_text()
    again = shell(SAMPLE, fresh)
    assert again.returncode == 0, again.stdout[-2000:]
    log = fresh / "train-again.log"
    proc = shell(f"{MAIN_JOB} max_duration=24ba eval_interval=200ba", fresh, log)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "already finished" in text and "runs/flexbert-tiny/hf" in text, text
    assert "Traceback" not in text and len(text.encode()) < 2_000, text
    assert (fresh / "runs" / "flexbert-tiny" / "metrics.jsonl").read_text() == before
