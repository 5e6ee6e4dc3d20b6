"""The console of a training run: compact metrics lines with the right total for this phase
(batches, tokens, after load_path + reset_time, after extending a run), evaluation at the last
step even when eval_interval is longer than the run, no Composer banners, and the end-of-run
summary with loss.png."""

from __future__ import annotations

import contextlib
import io
import os
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
    assert f"c: loading weights, optimizer and schedule from {first / 'ep0-ba6-rank0.pt'}" in text
    assert "step and token counts start at 0" in text
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
def at_step(step: int, tokens: int = 0):
    """A stand-in for Composer's State: the console reads only its timestamp."""
    from types import SimpleNamespace

    from composer.core import Timestamp

    return SimpleNamespace(timestamp=Timestamp(batch=step, token=tokens))


def test_eta_follows_tokens_through_the_batch_size_warmup():
    """The tiny recipe's warmup (8 -> 32 rows over 200k tokens): 50 steps hold 71k of 3.09M
    token slots, so the 750 steps left take ~42x the time so far, not 15x."""
    import time

    from composer.core import TimeUnit

    from flexbert.data.schedule import RowSchedule
    from flexbert.train.callbacks.console import Console

    schedule = RowSchedule(32, 128, 1, 8, 200_000)
    console = Console(work=schedule.tokens_before)
    console.unit, console.total = TimeUnit.BATCH, 800
    console.start_time = time.time() - 100.0
    eta = console.eta(at_step(50))
    expected = 100.0 * (schedule.tokens_before(800) - schedule.tokens_before(50)) \
        / schedule.tokens_before(50)
    assert abs(eta - expected) < 0.02 * expected, (eta, expected)
    steps_only = Console()
    steps_only.unit, steps_only.total, steps_only.start_time = TimeUnit.BATCH, 800, console.start_time
    assert eta > 2.5 * steps_only.eta(at_step(50))  # the old estimate: 750/50 x 100 s


def test_metrics_line_shows_the_mean_loss_since_the_last_line():
    from flexbert.train.callbacks.console import TRAIN_LOSS, Console

    console = Console()
    console.total = 10
    for step, loss in enumerate([4.0, 6.0, 8.0], start=1):
        console.log_metrics({TRAIN_LOSS: loss})
        console.train_curve.append((step, loss))
        console.line_losses.append(loss)
    assert "loss 6.0000 (mean of 3 steps)" in console.train_line(at_step(3))
    console.line_losses.append(5.0)
    assert "| loss 5.0000 |" in console.train_line(at_step(4))  # one step: no "mean of"


def test_prints_during_a_bar_start_on_their_own_line():
    """What another part of the run prints while the bar is drawn (publish, warnings) clears the
    bar's line first instead of running into it."""
    from tqdm.auto import tqdm

    from flexbert.train.callbacks.console import BarSafeStream

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    bar = tqdm(total=10, file=term, leave=True)
    bar.n = 3
    bar.refresh()
    stream = BarSafeStream(bar, term)
    stream.write("published runs/x")
    assert "published" not in term.getvalue()  # held until the line is complete
    stream.write("/model\n")
    bar.close()
    text = term.getvalue()
    before = text[:text.index("published runs/x/model\n")]
    assert "3/10" in before and before.endswith("\r"), repr(text)  # the bar's line was cleared


def test_checkpoints_command_lists_step_tokens_and_loss(first, capsys):
    from flexbert import cli

    folder, _ = first
    rows = {r["step"]: r for r in read_metrics(str(folder / "metrics.jsonl"))}
    assert cli.main(["checkpoints", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(l for l in out if l.startswith("ep0-ba6-rank0.pt"))
    assert f" 6 " in line and f"{rows[6]['tokens']:,}" in line and f"{rows[6]['loss']:.4f}" in line
    assert f"{rows[6]['metrics/eval/MaskedLoss']:.4f}" in line
    # exactly one row is marked, the one latest-rank0.pt names (other tests here move it on)
    latest = os.path.basename(os.path.realpath(folder / "latest-rank0.pt"))
    marked = [l for l in out if l.endswith("(latest)")]
    assert len(marked) == 1 and marked[0].startswith(latest), (marked, latest)
