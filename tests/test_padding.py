"""Padded and unpadded layouts must compute the same function: outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from flexbert.model import FlexBertForMaskedLM
from flexbert.model.attention.layout import describe_batch
from tests.helpers import copy_model, mixed_batch, tiny_config

LENGTHS = [17, 5, 11, 1]
ATOL = 1e-5


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(model, ids, mask):
    model.zero_grad()
    logits = model(ids, mask).logits
    real = mask.bool()
    (logits[real] ** 2).mean().backward()
    return logits[real].detach(), _grads(model)


@pytest.mark.parametrize("window", [0, 6])
@pytest.mark.parametrize("layer", ["prenorm", "postnorm", "parallel"])
def test_padded_equals_unpadded(window, layer):
    torch.manual_seed(0)
    overrides = {"attention.local_window": window, "layer": layer}
    unpadded = FlexBertForMaskedLM(tiny_config(padding="unpadded", **overrides))
    padded = copy_model(FlexBertForMaskedLM, unpadded, tiny_config(padding="padded", **overrides))
    ids, mask = mixed_batch(LENGTHS)
    out_u, grads_u = _run(unpadded, ids, mask)
    out_p, grads_p = _run(padded, ids, mask)
    torch.testing.assert_close(out_u, out_p, atol=ATOL, rtol=0)
    assert grads_u.keys() == grads_p.keys()
    for name in grads_u:
        torch.testing.assert_close(grads_u[name], grads_p[name], atol=ATOL, rtol=0, msg=name)


def test_local_layers_really_use_the_window():
    """Guard against a parity test that passes because the window is never applied."""
    torch.manual_seed(0)
    local = FlexBertForMaskedLM(tiny_config(**{"attention.local_window": 2}))
    wide = copy_model(FlexBertForMaskedLM, local, tiny_config(**{"attention.local_window": 64}))
    ids, mask = mixed_batch([30])
    # At init attention is near uniform, so the window moves logits by ~1e-4: far above fp32
    # round-off (~1e-7), which is all a window that is never applied would leave.
    assert (local(ids, mask).logits - wide(ids, mask).logits).abs().max() > 1e-5


@pytest.mark.parametrize("padding", ["padded", "unpadded"])
def test_packed_rows_equal_separate_documents(padding):
    """Two documents packed in one row (position ids restart) == each document alone."""
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(tiny_config(padding=padding)).eval()
    ids, mask = mixed_batch([9, 13])
    packed = torch.cat([ids[0, :9], ids[1, :13], torch.zeros(3, dtype=torch.long)])[None]
    packed_mask = torch.tensor([[1] * 22 + [0] * 3])
    positions = torch.tensor([list(range(9)) + list(range(13)) + [0, 0, 0]])
    with torch.no_grad():
        together = model(packed, packed_mask, position_ids=positions).logits[0, :22]
        apart = model(ids, mask).logits[mask.bool()]
    torch.testing.assert_close(together, apart, atol=ATOL, rtol=0)


def test_flat_input_with_cu_seqlens_matches_rows():
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(tiny_config()).eval()
    ids, mask = mixed_batch(LENGTHS)
    flat = ids[mask.bool()]
    cu = torch.tensor([0, 17, 22, 33, 34], dtype=torch.int32)
    with torch.no_grad():
        from_flat = model(flat, cu_seqlens=cu).logits
        from_rows = model(ids, mask).logits[mask.bool()]
    assert from_flat.shape == (34, 128)
    torch.testing.assert_close(from_flat, from_rows, atol=ATOL, rtol=0)


def test_describe_batch_derives_documents_and_positions():
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    positions = torch.tensor([[0, 1, 0, 1, 0], [0, 1, 0, 0, 0]])
    layout = describe_batch(torch.ones(2, 5, dtype=torch.long), mask, positions, layout="padded")
    assert layout.cu_seqlens.tolist() == [0, 2, 4, 6]
    assert layout.max_seqlen == 2
    assert layout.doc_ids_L.tolist() == [[0, 0, 1, 1, -1], [2, 2, -1, -1, -1]]


def test_cu_seqlens_that_disagree_with_the_mask_are_refused():
    ids, mask = mixed_batch([4, 3])
    with pytest.raises(ValueError, match="cu_seqlens ends at 6 but the batch has 7 real tokens"):
        describe_batch(ids, mask, cu_seqlens=torch.tensor([0, 4, 6]))


def test_sparse_prediction_sees_only_masked_tokens():
    torch.manual_seed(0)
    dense = FlexBertForMaskedLM(tiny_config())
    sparse = copy_model(FlexBertForMaskedLM, dense, tiny_config(sparse_prediction=True))
    ids, mask = mixed_batch(LENGTHS)
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[2, 7], labels[3, 0] = 5, 6, 7
    out_d, out_s = dense(ids, mask, labels=labels), sparse(ids, mask, labels=labels)
    assert out_s.logits.shape == (3, 128)
    torch.testing.assert_close(out_s.logits, out_d.logits[labels != -100], atol=ATOL, rtol=0)
    torch.testing.assert_close(out_s.loss, out_d.loss, atol=ATOL, rtol=0)
