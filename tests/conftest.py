"""Shared fixtures. GPU-only tests carry @pytest.mark.gpu and skip cleanly without CUDA."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


# `pytest -m "not slow" tests` is the few-minute subset (README): the modules below train, fine-tune
# or launch processes end to end (each minutes on 2 cores), as do the single tests after them;
# everything else is unit-sized. CI runs the whole suite. A module-level or per-test
# @pytest.mark.slow works too; this list keeps the choice in one place.
SLOW_MODULES = {
    "test_activation_checkpointing", "test_compile", "test_console", "test_data_elastic",
    "test_data_text", "test_docs_commands", "test_eval", "test_finetune", "test_fsdp",
    "test_import_modernbert", "test_newcomer", "test_plugins", "test_recipe_continual",
    "test_recipe_phases", "test_sweep", "test_train_run", "test_trust_nan", "test_trust_pickle",
    "test_trust_publish", "test_trust_resume",
}
SLOW_TESTS = {
    "test_data_prep.py::test_cli_sample_offline", "test_data_prep.py::test_cli_mds_errors_on_stderr",
    "test_data_prep_errors.py::test_val_fraction_zero_trains_without_evaluation",
    "test_data_prep_errors.py::test_full_or_read_only_disk_is_one_line",
    "test_plan.py::test_measurement_matches_the_memory_a_real_fp32_forward_holds",
    "test_plan.py::test_plan_prints_every_phase_and_writes_json",
    "test_plan.py::test_training_md_figures_are_what_plan_prints_for_base",
    "test_data_loader.py::test_released_streaming_memory_frees_descriptors_but_not_live_loaders",
}


def pytest_collection_modifyitems(config, items):
    slow = pytest.mark.slow
    for item in items:
        module = item.path.stem
        if module in SLOW_MODULES or f"{item.path.name}::{item.originalname}" in SLOW_TESTS:
            item.add_marker(slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def repo() -> Path:
    return REPO


# --- data fixtures (flexbert.data / data_prep) ----------------------------------------------------

def make_documents(n_docs: int, seed: int = 0, min_words: int = 3, max_words: int = 400) -> list[str]:
    """Deterministic documents of varied length from a small vocabulary of made-up words."""
    import random

    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
             for _ in range(300)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words))) + "."
            for _ in range(n_docs)]


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    import json

    path.write_text("".join(json.dumps({field: d}) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def data_tokenizer(tmp_path_factory) -> Path:
    """A 512-token byte-level BPE trained on synthetic text (seconds, offline)."""
    from data_prep.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(make_documents(300, seed=1), 512, out)
    return out


@pytest.fixture(scope="session")
def data_corpus(tmp_path_factory, data_tokenizer) -> tuple[Path, list[str]]:
    """A data_prep output dir (train/ val/ stats.json tokenizer/) and the documents it holds."""
    from data_prep.mds import MdsOptions, build_mds

    root = tmp_path_factory.mktemp("corpus")
    docs = make_documents(1200, seed=2)
    src = write_jsonl(root / "docs.jsonl", docs)
    build_mds([str(src)], MdsOptions(tokenizer=str(data_tokenizer), out=str(root / "mds"),
                                     max_doc_tokens=512, val_fraction=0.1, progress=False,
                                     shard_size=1 << 16))
    return root / "mds", docs


# --- sample corpus (tiny recipe runs: training, sweeps, fine-tuning) ------------------------------

@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory) -> Path:
    """A small `data_prep sample` corpus (the tiny recipe's tokenizer shape: vocab 4096)."""
    from data_prep.sample import build_sample

    out = tmp_path_factory.mktemp("sample") / "sample"
    build_sample(str(out), max_bytes=600_000, progress=False)
    return out


@pytest.fixture(autouse=True)
def _release_streaming_memory():
    """Streaming keeps every dataset's shared memory open until exit (atexit); a suite that builds
    hundreds of datasets would run out of file descriptors."""
    yield
    if "streaming" in sys.modules:
        from flexbert.data.streams import release_streaming_memory

        release_streaming_memory()
