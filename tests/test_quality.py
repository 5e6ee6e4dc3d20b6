"""Model quality helpers: the unigram baseline the run summary prints (by hand on tiny counts, and
read from a real data_prep split), and bench/quality.py's evaluator, which must give one model the
same loss whichever path (FlexBERT checkpoint or plain-loop HF model) it came from."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from flexbert.data.unigram import (read_split, token_frequencies, unigram_cross_entropy,
                                    unigram_entropy)

REPO = Path(__file__).resolve().parents[1]


def test_unigram_entropy_by_hand():
    docs = [np.array([0, 5, 5, 6, 1]), np.array([0, 5, 7, 1])]
    counts = token_frequencies(docs, special_ids=[0, 1])
    assert counts == Counter({5: 3, 6: 1, 7: 1})  # framing tokens are never predicted
    p = [3 / 5, 1 / 5, 1 / 5]
    assert unigram_entropy(counts) == pytest.approx(-sum(q * math.log(q) for q in p))
    assert unigram_entropy(Counter({9: 4})) == 0.0


def test_unigram_cross_entropy_is_add_one_smoothed():
    train, target = Counter({5: 3, 6: 1}), Counter({5: 1, 7: 1})
    total = 4 + 8  # train tokens + vocabulary of 8 (one pseudo-count each)
    expected = -(math.log(4 / total) + math.log(1 / total)) / 2
    assert unigram_cross_entropy(train, target, vocab_size=8) == pytest.approx(expected)


def test_read_split_returns_every_validation_token(sample_corpus):
    stats = json.loads((sample_corpus / "stats.json").read_text())
    docs = read_split(sample_corpus, "val")
    assert len(docs) == stats["splits"]["val"]["samples"]
    assert sum(len(d) for d in docs) == stats["splits"]["val"]["tokens"]
    assert read_split(sample_corpus, "no-such-split") is None


@pytest.fixture(scope="module")
def quality_bench():
    sys.path.insert(0, str(REPO / "bench"))
    import quality

    return quality


def test_bench_evaluator_same_model_same_loss_both_paths(sample_corpus, quality_bench):
    """The evaluator scores the HF conversion of a FlexBERT model; FlexBERT's own forward on the
    same masked rows must give the same per-token loss, and the plain loop's starting model is
    the FlexBERT model's weights."""
    Q = quality_bench
    recipe = Q.load_recipe([f"data_dir={sample_corpus}", "model.num_layers=2"])
    special = Q.special_ids(sample_corpus)
    docs = read_split(sample_corpus, "val")[:6]
    ev = Q.Evaluator(docs, recipe.data.max_seq_len, 0.15, special, recipe.model.vocab_size)
    model = Q.initial_model(recipe).eval()
    via_hf = ev(Q.flex_to_hf(model))
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, attn, labels in ev.batches:
            out = model(input_ids=ids, attention_mask=attn, labels=labels)
            n = int((labels != -100).sum())
            total, count = total + out.loss.item() * n, count + n
    assert count == via_hf["masked_tokens"] > 0
    assert via_hf["loss"] == pytest.approx(total / count, abs=1e-4)
    again = Q.initial_model(recipe)  # the plain loop rebuilds the start: same seed, same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))
    assert ev(Q.flex_to_hf(again))["loss"] == pytest.approx(via_hf["loss"], abs=1e-6)


def test_sample_corpus_stores_documents_of_at_most_512_tokens(sample_corpus):
    """Long stdlib modules are stored as <= 512-token documents, which Streaming shuffles apart:
    the packer would otherwise fill a 32-row tiny batch with one module's pieces."""
    stats = json.loads((sample_corpus / "stats.json").read_text())
    assert stats["max_doc_tokens"] == 512
    docs = read_split(sample_corpus, "train")
    assert max(len(d) for d in docs) <= 512 and len(docs) > stats["documents"]


def test_sample_built_with_other_settings_is_rebuilt(tmp_path):
    """A runs/sample left by an earlier default (8192-token documents) is rebuilt, not refused."""
    from data_prep.sample import build_sample

    out = tmp_path / "sample"
    build_sample(str(out), max_bytes=60_000, max_doc_tokens=8192, progress=False)
    stats = build_sample(str(out), max_bytes=60_000, progress=False)
    assert stats["max_doc_tokens"] == 512
    assert json.loads((out / "sample.json").read_text())["max_doc_tokens"] == 512


def test_verdict_takes_the_worst_mean_difference_and_its_standard_error(quality_bench):
    curve = [{"tokens": 100, "diff": [0.10, -0.06, 0.02]},   # mean +0.02
             {"tokens": 200, "diff": [0.09, 0.05, 0.07]}]    # mean +0.07: the worst
    v = quality_bench.verdict(curve)
    assert v["worst_tokens"] == 200 and v["worst_mean_diff"] == pytest.approx(0.07)
    assert v["standard_error"] == pytest.approx(0.02 / math.sqrt(3)) and not v["met"]
    assert quality_bench.verdict(curve[:1])["met"]


def test_factor_rows_compare_each_seed_with_the_recipe_on_that_seed(quality_bench):
    def cell(seed, losses, side="flex", overrides=()):
        return {"side": side, "corpus": "c", "seed": seed, "overrides": list(overrides),
                "points": [{"tokens": t, "loss": x} for t, x in zip((10, 20), losses)]}

    main = [cell(17, (6.0, 5.0)), cell(18, (6.0, 5.4)), cell(17, (6.0, 4.9), "plain"),
            cell(18, (6.0, 5.3), "plain")]
    name, overrides = next(iter(quality_bench.FACTORS.items()))
    factors = [cell(17, (6.0, 5.1), overrides=overrides), cell(18, (6.0, 5.5), overrides=overrides)]
    table = quality_bench.factor_table(main, factors, [], "c")
    assert table["tokens"] == 20 and table["noise"] == pytest.approx(0.4 / math.sqrt(2))
    assert table["rows"][name]["diff"] == pytest.approx(0.1)  # +0.1 on each seed, whatever its level
    assert table["rows"]["plain loop (reference)"]["diff"] == pytest.approx(-0.1)
