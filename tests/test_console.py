"""The console of a training run: compact metrics lines with the right total for this phase
(batches, tokens, after load_path + reset_time, after extending a run), evaluation at the last
step even when eval_interval is longer than the run, no Composer banners, and the end-of-run
summary with loss.png."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from flexbert.runtime.metrics_file import read_metrics
from flexbert.train.main import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def run_args(corpus: Path, folder: Path, *extra: str) -> list[str]:
    return [TINY, f"data_dir={corpus}", f"save_folder={folder}", "run_name=c",
            "trainer.precision=fp32", "trainer.eval_subset_num_batches=1", "export.hf_folder=null",
            "batch.global_train_batch_size=8", "batch.global_eval_batch_size=8",
            "batch.warmup_start=null", "trainer.device_train_microbatch_size=8",
            "trainer.console_log_interval=2ba", "eval_interval=1000ba", "save_interval=1000ba",
            *extra]


@pytest.fixture(scope="module")
def first(sample_corpus, tmp_path_factory) -> tuple[Path, str]:
    """A 6-step run whose eval_interval (1000ba) is longer than the run, and what it printed."""
    folder = tmp_path_factory.mktemp("console")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        assert main(run_args(sample_corpus, folder, "max_duration=6ba")) == 0
    return folder, out.getvalue()


def test_run_prints_lines_eval_and_summary(first):
    first, text = first
    for line in ("step 2/6", "step 4/6", "step 6/6 100%", "eval at step 6: MaskedAccuracy"):
        assert line in text, line
    for noise in ("Config:", "Setting seed", "duplicate logs", "loss/train/total="):
        assert noise not in text, noise
    rows = read_metrics(str(first / "metrics.jsonl"))
    assert rows[-1]["step"] == 6 and "metrics/eval/MaskedLoss" in rows[-1]  # eval at the end
    assert "== run c finished" in text
    summary = text[text.index("== run c finished"):]
    for key in ("wall time", "steps        6", "tokens", "train loss", "eval loss", "tokens/s",
                str(first / "metrics.jsonl"), str(first / "loss.png"), "latest ep0-ba6-rank0.pt"):
        assert key in summary, key
    assert (first / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(text.encode()) < 4000, text


def test_new_phase_bar_counts_tokens_from_zero(sample_corpus, first, tmp_path, capfd):
    """load_path + reset_time: the total is this phase's (tokens here), not the previous one's."""
    first, _ = first
    assert main(run_args(sample_corpus, tmp_path, "max_duration=2500tok", "reset_time=true",
                         f"load_path={first / 'ep0-ba6-rank0.pt'}",
                         "trainer.console_log_interval=1ba")) == 0
    text = "".join(capfd.readouterr())
    first_line = next(line for line in text.splitlines() if line.startswith("step 1 |"))
    assert "/2.5k" in first_line and "tok 1" in first_line, first_line
    assert "eval at step" in text


def test_extended_run_total_is_the_new_end(sample_corpus, first, capfd):
    """autoresume with a longer max_duration: the count continues at 7 of 8."""
    first, _ = first
    assert main(run_args(sample_corpus, first, "max_duration=8ba", "autoresume=true",
                         "trainer.console_log_interval=1ba")) == 0
    text = "".join(capfd.readouterr())
    assert "step 7/8" in text and "step 8/8 100%" in text and "step 1/8" not in text
    assert "(2 this run)" in text


def test_summary_shows_unigram_baseline_and_fill_mask(sample_corpus, first):
    """The summary puts the eval loss beside the validation tokens' unigram entropy, and fills a
    [MASK] in a validation line with the model's top 3."""
    from flexbert.data.unigram import read_split, token_frequencies, unigram_entropy

    _, text = first
    summary = text[text.index("== run c finished"):]
    docs = read_split(sample_corpus, "val")
    expected = unigram_entropy(token_frequencies(docs, special_ids=range(5)))
    assert re.search(rf"^  unigram +{expected:.4f} \(entropy of the validation tokens; eval "
                     rf"loss \d\.\d{{4}} is \d\.\d{{4}} (below|above) it\)$", summary, re.M), summary
    line = next(ln for ln in summary.splitlines() if ln.strip().startswith("fill-mask"))
    assert "[MASK]" in line and "->" in line and "held-back answer" in line, line
    assert len(line.split("->")[1].split(",")) >= 3, line  # three guesses
