"""The chunked MLM cross entropy equals torch's, value and gradient, across chunk boundaries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flexbert.model import loss as L


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_elements", [1 << 25, 7 * 50])  # one chunk; 7 rows, ragged last
def test_matches_torch_cross_entropy(monkeypatch, dtype, chunk_elements):
    monkeypatch.setattr(L, "CHUNK_ELEMENTS", chunk_elements)
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(61, 50, generator=gen) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (61,), generator=gen)
    upstream = torch.tensor(1.7)
    ref = F.cross_entropy(logits.float(), targets)
    (ref_grad,) = torch.autograd.grad(ref * upstream, logits)
    got = L.chunked_cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(got * upstream, logits)
    assert got.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=tol, atol=tol)


def test_chunks_cover_every_row_once():
    spans = L._row_chunks(10, L.CHUNK_ELEMENTS // 3)
    assert spans == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_bad_shapes_name_both():
    with pytest.raises(ValueError, match=r"\[M, V\].*\(4, 5\).*\(3,\)"):
        L.chunked_cross_entropy(torch.zeros(4, 5), torch.zeros(3, dtype=torch.long))


def test_model_loss_is_the_mean_over_masked_tokens():
    from flexbert.model import FlexBertForMaskedLM
    from helpers import mixed_batch, tiny_config

    torch.manual_seed(0)
    model = FlexBertForMaskedLM(tiny_config(sparse_prediction=True))
    ids, mask = mixed_batch([9, 5, 12])
    labels = torch.where((torch.rand(ids.shape) < 0.4) & (mask == 1), ids, -100)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits.float(), labels[labels != -100]))


def test_traces_as_one_graph_and_agrees_when_compiled():
    """torch.compile (eager backend: tracing only, fast on CPU), fullgraph: no graph break, and
    the same loss as eager."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(13, 20, generator=gen)
    targets = torch.randint(0, 20, (13,), generator=gen)
    compiled = torch.compile(L.chunked_cross_entropy, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(logits, targets), F.cross_entropy(logits, targets))
