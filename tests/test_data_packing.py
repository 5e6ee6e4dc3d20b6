"""Packing, attention metadata, microbatch splitting, 1-D form, and MLM masking statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexbert.data import (Masker, best_fit, collate_rows, num_tokens, packing_efficiency,
                           split_packed_batch, unpad_batch)


def _batch(lengths_per_row, row_len=16, pad=2):
    rng = np.random.default_rng(0)
    rows = [[rng.integers(10, 50, n) for n in row] for row in lengths_per_row]
    b = collate_rows(rows, row_len, pad)
    out = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in b.items()}
    out["labels"] = out["input_ids"].clone()
    return out, rows


def test_best_fit_respects_capacity_and_prefers_tightest_row():
    where, used = best_fit([10, 6, 6, 4, 3], [False] * 5, n_rows=2, row_len=16)
    assert where == [0, 0, 1, 1, 1]  # the second 6 fills row 0's gap exactly
    assert used == [16, 13]
    where, used = best_fit([9, 9, 9], [False] * 3, n_rows=2, row_len=16)
    assert where.count(-1) == 1 and max(used) <= 16


def test_best_fit_priority_goes_first():
    where, _ = best_fit([16, 16, 5], [False, False, True], n_rows=2, row_len=16)
    assert where[2] >= 0 and where.count(-1) == 1


def test_collate_metadata_never_crosses_documents():
    b, rows = _batch([[5, 7], [16], [3, 3, 3]])
    real = b["attention_mask"].bool()
    assert b["cu_seqlens"].tolist() == [0, 5, 12, 28, 31, 34, 37]
    assert b["cu_seqlens"].dtype == torch.int32 and b["max_seqlen"] == 16
    assert b["position_ids"][0, :12].tolist() == list(range(5)) + list(range(7))
    assert (b["position_ids"][~real] == 0).all() and (b["input_ids"][~real] == 2).all()
    flat = b["input_ids"][real]
    docs = [d for row in rows for d in row]
    cu = b["cu_seqlens"].tolist()
    assert all(flat[cu[i]:cu[i + 1]].tolist() == docs[i].tolist() for i in range(len(docs)))
    assert num_tokens(b) == 37 and packing_efficiency(b) == pytest.approx(37 / 48)


def test_split_recomputes_metadata_per_chunk():
    b, _ = _batch([[5, 7], [16], [3, 3, 3]])
    parts = split_packed_batch(b, 2)
    assert [p["input_ids"].shape[0] for p in parts] == [2, 1]
    assert parts[0]["cu_seqlens"].tolist() == [0, 5, 12, 28] and parts[0]["max_seqlen"] == 16
    assert parts[1]["cu_seqlens"].tolist() == [0, 3, 6, 9] and parts[1]["max_seqlen"] == 3
    assert len(split_packed_batch(b, num_microbatches=3)) == 3
    with pytest.raises(ValueError, match="microbatch_size must be >= 1"):
        split_packed_batch(b, 0)


def test_unpad_gives_the_1d_form():
    b, _ = _batch([[5, 7], [3]])
    u = unpad_batch(b)
    assert u["input_ids"].shape == (15,) and u["cu_seqlens"].tolist() == [0, 5, 12, 15]
    assert u["position_ids"][5].item() == 0 and u["max_seqlen"] == 7


def test_masking_statistics_on_100k_tokens():
    vocab, special = 1000, [0, 1, 2, 3, 4]
    rng = np.random.default_rng(0)
    ids = rng.integers(5, vocab, size=(100, 1000))
    ids[:, 0], ids[:, -1] = 0, 1  # CLS / SEP framing must never be masked
    attn = np.ones_like(ids)
    attn[:, -100:] = 0
    ids[:, -100:] = 2
    masked, labels = Masker(vocab, special, mask_id=3)(ids, attn, 0.3, np.random.default_rng(1))
    chosen = labels != -100
    maskable = attn.astype(bool) & (ids > 4)
    assert not chosen[~maskable].any()
    assert chosen.sum() / maskable.sum() == pytest.approx(0.3, abs=0.01)
    assert (labels[chosen] == ids[chosen]).all()
    frac_mask = (masked[chosen] == 3).mean()
    changed = chosen & (masked != ids) & (masked != 3)
    assert frac_mask == pytest.approx(0.8, abs=0.01)
    assert changed.sum() / chosen.sum() == pytest.approx(0.1, abs=0.01)
    assert not np.isin(masked[changed], special).any()
    assert (masked[~chosen] == ids[~chosen]).all()


def test_best_fit_random_order_ignores_length_but_keeps_priority():
    lengths, ties = [16, 4, 16, 4], [0.9, 0.1, 0.2, 0.8]
    where, _ = best_fit(lengths, [False] * 4, 1, 16, ties)  # longest first: the 16 with tie 0.2
    assert where == [-1, -1, 0, -1]
    where, _ = best_fit(lengths, [False] * 4, 1, 16, ties, longest_first=False)
    assert where == [-1, 0, -1, 0]  # 4 (tie 0.1) then the other 4 (0.8); no 16 fits after them
    where, _ = best_fit(lengths, [True, False, False, False], 1, 16, ties, longest_first=False)
    assert where == [0, -1, -1, -1]  # a piece that waited too long still goes first


class _Orders:
    def get(self, epoch):
        return np.arange(40)


def _documents_per_batch(monkeypatch, longest_first, buffer_factor, pieces=4, row_len=16):
    """A finite partition of 40 documents of `pieces` full rows each (every token of a document
    is its id): the documents of each batch of 8 rows."""
    import flexbert.data.dataset as dataset_mod

    monkeypatch.setattr(dataset_mod, "read_tokens",
                        lambda docs, sid: np.full(pieces * row_len, sid + 10, dtype=np.int64))
    part = dataset_mod.Partition(None, _Orders(), 0, 1, row_len, infinite=False,
                                 longest_first=longest_first)
    batches, k = [], 0
    while (rows := part.next_rows(8, buffer_factor, 3, np.random.default_rng(k))) is not None:
        batches.append([int(piece[0]) - 10 for row in rows for piece in row])
        k += 1
    return batches


def test_random_order_from_a_large_buffer_spreads_documents_and_loses_no_piece(monkeypatch):
    tight = _documents_per_batch(monkeypatch, True, 1.0)
    spread = _documents_per_batch(monkeypatch, False, 8.0)
    # a 1-batch buffer: each batch of 8 rows is two documents' 4 pieces
    assert all(len(set(b)) == 2 for b in tight)
    # random order over 8 batches' worth of pieces: batches mix many documents, and a
    # document's pieces are spread over more than its 4 batches' neighbourhood
    assert sum(len(set(b)) for b in spread) / len(spread) >= 5
    first = {d: min(i for i, b in enumerate(spread) if d in b) for d in range(40)}
    last = {d: max(i for i, b in enumerate(spread) if d in b) for d in range(40)}
    assert max(last[d] - first[d] for d in range(40)) >= 4
    for batches in (tight, spread):
        assert sorted(d for b in batches for d in b) == sorted(list(range(40)) * 4)  # each once
