"""Model assembly across the registry: every component builds, trains a step, and the heads
respect padding."""

from __future__ import annotations

import pytest
import torch

from flexbert.cli import main as cli
from flexbert.model import FlexBertForMaskedLM, FlexBertForSequenceClassification
from flexbert.registry import ALL
from tests.helpers import mixed_batch, tiny_config

VARIANTS = [
    {"norm.type": "rmsnorm"}, {"norm.bias": True}, {"position.type": "absolute"},
    {"position.type": "none"}, {"mlp.type": "mlp", "mlp.activation": "relu"},
    {"mlp.activation": "silu"}, {"mlp.activation": "gelu_tanh"}, {"init.type": "normal"},
    {"attention.qkv_bias": True, "attention.out_bias": True, "mlp.bias": True},
    {"layer": "postnorm"}, {"layer": "parallel"}, {"embeddings.norm": False},
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_variant_learns_on_a_fixed_batch(overrides):
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(tiny_config(sparse_prediction=True, **overrides))
    ids, mask = mixed_batch([20, 12])
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(ids, mask, labels=labels).loss
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.1


def test_megatron_init_scales_output_projections():
    torch.manual_seed(0)
    cfg = tiny_config(hidden_size=128, **{"mlp.intermediate_size": 256, "init.std": 0.02})
    model = FlexBertForMaskedLM(cfg)
    wqkv = model.model.layers[1].attn.Wqkv.weight
    wo = model.model.layers[1].attn.Wo.weight
    assert wqkv.abs().max() <= 2 * 0.02 + 1e-7
    expected = 0.02 / (2 * cfg.num_layers) ** 0.5
    assert abs(wo.std().item() - expected * 0.88) < expected * 0.1  # truncation at 2 sigma: 0.88x
    assert model.decoder.weight is model.model.embeddings.tok_embeddings.weight


def test_first_layer_has_no_attention_norm_by_default():
    model = FlexBertForMaskedLM(tiny_config())
    assert isinstance(model.model.layers[0].attn_norm, torch.nn.Identity)
    assert isinstance(model.model.layers[1].attn_norm, torch.nn.LayerNorm)
    with_norm = FlexBertForMaskedLM(tiny_config(first_layer_attn_norm=True))
    assert isinstance(with_norm.model.layers[0].attn_norm, torch.nn.LayerNorm)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("padding", ["padded", "unpadded"])
def test_classification_pooling_ignores_padding(pooling, padding):
    """A document's score must not change when more padding is appended to its row."""
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(
        tiny_config(padding=padding, **{"classifier.pooling": pooling, "classifier.num_labels": 3}))
    model.eval()
    ids, mask = mixed_batch([9, 4])
    wide_ids = torch.cat([ids, torch.zeros(2, 7, dtype=torch.long)], 1)
    wide_mask = torch.cat([mask, torch.zeros(2, 7, dtype=torch.long)], 1)
    with torch.no_grad():
        narrow = model(ids, mask).logits
        wide = model(wide_ids, wide_mask).logits
        alone = model(ids[1:, :4], mask[1:, :4]).logits
    assert narrow.shape == (2, 3)
    torch.testing.assert_close(narrow, wide, atol=1e-5, rtol=0)
    torch.testing.assert_close(narrow[1:], alone, atol=1e-5, rtol=0)


def test_classification_loss_kinds():
    torch.manual_seed(0)
    ids, mask = mixed_batch([6, 8])
    reg = FlexBertForSequenceClassification(tiny_config(**{
        "classifier.num_labels": 1, "classifier.problem_type": "regression"}))
    out = reg(ids, mask, labels=torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(out.loss, ((out.logits.squeeze(-1) - torch.tensor([0.5, -1.0])) ** 2).mean())
    clf = FlexBertForSequenceClassification(tiny_config())
    out = clf(ids, mask, labels=torch.tensor([0, 1]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1])))


def test_components_command_lists_every_registry(capsys):
    assert cli(["components"]) == 0
    printed = capsys.readouterr().out
    for family, registry in ALL.items():
        assert family in printed
        for name in registry.names():
            assert f"  {name} " in printed
    for needle in ("sdpa", "flex", "flash_attn", "rope", "glu", "rmsnorm", "unpadded", "parallel",
                   "megatron"):
        assert needle in printed
