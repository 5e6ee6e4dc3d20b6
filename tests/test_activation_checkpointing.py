"""trainer.activation_checkpointing: recomputing encoder layers in the backward changes memory,
not numbers. Same loss and gradients with it on (every layer, every 2nd) and off, both layouts."""

from __future__ import annotations

import pytest
import torch

from flexbert.model import FlexBertForMaskedLM
from flexbert.train.distributed.fsdp import apply_activation_checkpointing
from tests.helpers import copy_model, mixed_batch, tiny_config


def loss_and_grads(model, ids, mask, labels):
    model.zero_grad()
    loss = model(ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("padding, every_n", [("padded", 1), ("unpadded", 2), ("padded", 2)])
def test_checkpointing_keeps_loss_and_gradients(padding, every_n):
    cfg = tiny_config(padding=padding, **{"mlp.dropout": 0.1})  # the recompute replays the RNG
    plain = FlexBertForMaskedLM(cfg).train()
    checkpointed = copy_model(FlexBertForMaskedLM, plain, cfg).train()
    apply_activation_checkpointing(checkpointed, every_n)
    ids, mask = mixed_batch([9, 5, 12])
    labels = ids.masked_fill(torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) > 0.4,
                             -100).masked_fill(mask == 0, -100)
    calls = []
    hook = checkpointed.model.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    torch.manual_seed(0)
    loss_a, grads_a = loss_and_grads(plain, ids, mask, labels)
    torch.manual_seed(0)
    loss_b, grads_b = loss_and_grads(checkpointed, ids, mask, labels)
    hook.remove()
    assert len(calls) == 2  # layer 0 ran again in the backward: it was really recomputed
    assert abs(loss_a - loss_b) <= 1e-6
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    worst = max((grads_a[k] - grads_b[k]).abs().max().item() for k in grads_a)
    assert worst <= 1e-6, worst
