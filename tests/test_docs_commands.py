"""Every command of README.md and docs/*.md, as a reader runs them: each ```bash block in document
order (README first, then docs/ by name), one command at a time, in one fresh folder (the repo's
configs/, bench/ and train.py; nothing prepared). Any non-zero exit fails the test.

The list is read from the documents on every run, so a command added to a document is run
without touching this file. Two tables below change what runs, each entry with its reason:
SKIP (needs a GPU, the network or the Hub, data that is not here, or is a synopsis with
placeholders) and SHORTEN (the same command with overrides appended that make it a few steps long;
the overrides are the documented `key=value` / flag ones, listed in docs/training.md "Tests").
"""

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
DOCUMENTS = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]

# (regex searched in the command, reason): the command is not run.
SKIP = [
    (r"^pip |^python -m venv|^\. /tmp/|^\. \.venv|^source \.venv", "installs packages "
     "(network) or enters the venv made for them; the test runs in the environment it was "
     "installed into"),
    (r"requirements/lock\.sh", "rewrites the lock files (asks the package index)"),
    (r"(^|\s)(python -m )?pytest ", "runs test files: the suite itself, minutes each (and this "
     "test would run itself)"),
    (r"train\.py\s+configs/(?!tiny)", "a GPU-sized recipe (base/large phases): hours on GPUs"),
    (r"answerdotai/|--tasks glue|--task (sst2|mrpc|stsb)\b|--tasks sst2", "needs the Hugging Face "
     "Hub (models or GLUE data)"),
    (r"/raw/|/data/mds|/path/to|checkpoints/modernbert|configs/my_phase2", "the reader's own data "
     "or ModernBERT's checkpoints, not in a fresh folder"),
    (r"ckpt-[abc]\.pt|averaged|--task train\.jsonl,dev\.jsonl|answerdotai-base/ my-model/",
     "example file names standing for the reader's own files"),
    (r"\b[A-Z][A-Z_]{2,}\b|\.\.\.|\[", "a synopsis with placeholders (SRC..., OUT_DIR, [--flag])"),
]

TRAIN_STEPS = "max_duration=6ba save_interval=3ba eval_interval=3ba trainer.eval_subset_num_batches=1"
# (regex searched in the command, appended overrides, reason)
SHORTEN = [
    (r"(^|\s)train\.py ", TRAIN_STEPS, "hundreds of steps -> 6 (later key=value overrides win)"),
    (r"^flexbert sweep (?!.*--print-commands)", "max_duration=3ba",
     "4 runs of 300 steps -> 3 steps each"),
    (r"^flexbert sweep .*--print-commands", "max_duration=3ba",
     "the same override, so the printed commands are checked to hold one max_duration"),
    (r"^flexbert eval ", "--seeds 1 --epochs 1 --max-train-samples 32 --max-eval-samples 32",
     "fine-tunes per checkpoint, task and seed -> one short one each"),
]


def documented_commands() -> list[tuple[str, int, str]]:
    """(document, line, command) for every command line of every ```bash block: continuation
    lines joined, comments and blank lines dropped, `a && b` split into its commands."""
    found = []
    for doc in DOCUMENTS:
        text = (REPO / doc).read_text()
        for block in re.finditer(r"^```bash\n(.*?)^```", text, re.S | re.M):
            number = text[:block.start()].count("\n") + 2
            pending, start = "", number
            for offset, raw in enumerate(block.group(1).splitlines()):
                if not pending:
                    start = number + offset
                pending += raw
                if pending.endswith("\\"):
                    pending = pending[:-1] + " "
                    continue
                words, pending = shlex.split(pending, comments=True), ""
                for part in " ".join(shlex.quote(w) for w in words).split(" '&&' "):
                    if part.strip():
                        found.append((doc, start, part.strip()))
    return found


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIP if re.search(pattern, command)), None)


def shortened(command: str) -> str:
    for pattern, extra, _ in SHORTEN:
        if re.search(pattern, command):
            return f"{command} {extra}"
    return command


def test_the_tables_parse_the_documents():
    """Cheap checks of the reader: the README's main job is found, split at `&&`, and the tables
    leave it runnable; placeholders are skipped and training is shortened."""
    commands = [c for _, _, c in documented_commands()]
    assert "python train.py configs/tiny.yaml" in commands
    assert "python -m data_prep sample --out runs/sample" in commands
    assert skip_reason("python train.py configs/tiny.yaml") is None
    assert skip_reason("flexbert from-hf HF_DIR_OR_NAME OUT_DIR")
    assert skip_reason("composer train.py configs/base.yaml data_dir=/data/mds")
    assert skip_reason("composer train.py configs/context_extension.yaml data_dir=data/pretrain")
    assert skip_reason("flexbert plan configs/base.yaml --gpus 8xH100") is None  # CPU arithmetic
    assert shortened("python train.py configs/tiny.yaml").endswith(TRAIN_STEPS)
    assert not any("\\" in c or c.startswith("#") for c in commands)


def fresh_folder(root: Path) -> Path:
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "bench", root / "bench", ignore=shutil.ignore_patterns("results"))
    shutil.copy(REPO / "train.py", root / "train.py")
    return root


def environment(bin_dir: Path) -> dict:
    """`python`, `flexbert` and `composer` resolve to this interpreter and this checkout."""
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "flexbert").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m flexbert.cli "$@"\n')
    (bin_dir / "flexbert").chmod(0o755)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    return {**os.environ, "PATH": path, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_every_documented_command_runs_in_order_in_a_fresh_folder(tmp_path):
    folder = fresh_folder(tmp_path / "fresh")
    env = environment(tmp_path / "bin")
    ran, skipped = [], []
    for i, (doc, line, command) in enumerate(documented_commands()):
        if (why := skip_reason(command)) is not None:
            skipped.append(f"{doc}:{line} `{command}`: {why}")
            continue
        run = shortened(command)
        log = tmp_path / f"{i:03d}.log"
        with open(log, "w") as out:
            proc = subprocess.run(["bash", "-c", run], cwd=folder, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=1800)
        output = log.read_text()
        assert proc.returncode == 0, (f"{doc}:{line} `{run}` exited {proc.returncode}:\n"
                                      f"{output[-3000:]}")
        if "--print-commands" in run:  # the appended override replaced the file's value
            assert all(c.count("max_duration=") == 1 for c in output.splitlines()
                       if "train.py" in c), output
        ran.append(f"{doc}:{line} `{run}`")
    print("ran:\n  " + "\n  ".join(ran) + "\nskipped:\n  " + "\n  ".join(skipped))
    assert len(ran) >= 10, ran
