"""The two attention dropouts: `attention.dropout` (probabilities, inside the kernel) and
`attention.out_dropout` (after the output projection, any kernel)."""

from __future__ import annotations

import pytest
import torch

from flexbert.config import ConfigError
from flexbert.io.hf import flex_config_from_hf, hf_config_dict
from flexbert.model.attention.kernels import KERNELS
from flexbert.model import FlexBertForMaskedLM
from tests.helpers import mixed_batch, tiny_config

P = 0.5


def _capture(model: FlexBertForMaskedLM, train: bool) -> dict[str, torch.Tensor]:
    """Layer 0's attention: what enters Wo, what leaves Wo, what leaves the attention module."""
    attn, seen = model.model.layers[0].attn, {}
    hooks = [attn.Wo.register_forward_hook(lambda m, a, out: seen.update(wo_in=a[0], wo_out=out)),
             attn.register_forward_hook(lambda m, a, out: seen.update(attn_out=out))]
    ids, mask = mixed_batch([11, 7], vocab=128)
    model.train(train)
    torch.manual_seed(0)
    with torch.no_grad():
        model(ids, mask)
    for hook in hooks:
        hook.remove()
    return seen


def test_out_dropout_drops_in_training_and_is_identity_in_eval():
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(tiny_config(**{"attention.out_dropout": P}))
    train = _capture(model, train=True)
    ratio = train["attn_out"] / train["wo_out"]
    dropped = ratio.abs() < 1e-6
    assert 0.3 < dropped.float().mean().item() < 0.7
    torch.testing.assert_close(ratio[~dropped], torch.full_like(ratio[~dropped], 1 / (1 - P)))
    evaluated = _capture(model, train=False)
    torch.testing.assert_close(evaluated["attn_out"], evaluated["wo_out"], atol=0, rtol=0)


def test_out_dropout_leaves_the_probabilities_alone_and_dropout_drops_them():
    torch.manual_seed(0)
    only_out = FlexBertForMaskedLM(tiny_config(**{"attention.out_dropout": P}))
    # Layer 0 sees the embeddings (no embedding dropout): without probability dropout, what
    # enters Wo is the same in training and in eval.
    torch.testing.assert_close(_capture(only_out, True)["wo_in"],
                               _capture(only_out, False)["wo_in"])
    probs = FlexBertForMaskedLM(tiny_config(**{"attention.dropout": P}))
    probs.load_state_dict(only_out.state_dict())
    assert not torch.allclose(_capture(probs, True)["wo_in"], _capture(probs, False)["wo_in"])
    train = _capture(probs, True)
    torch.testing.assert_close(train["attn_out"], train["wo_out"], atol=0, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS.names())
def test_kernels_refuse_probability_dropout_they_cannot_do_and_accept_output_dropout(kernel):
    spec = KERNELS.get(kernel)
    padding = "unpadded" if "unpadded" in spec.layouts else "padded"
    base = {"attention.kernel": kernel, "padding": padding}
    if not spec.supports_window:  # e.g. varlen_attn on a torch without its window_size
        base["attention.local_window"] = 0
    cfg = tiny_config(**base, **{"attention.out_dropout": 0.1})
    assert cfg.attention.out_dropout == 0.1
    if spec.supports_dropout:
        assert tiny_config(**base, **{"attention.dropout": 0.1}).attention.dropout == 0.1
    else:
        with pytest.raises(ConfigError, match=r"model\.attention\.dropout: kernel .* has no "
                                              r"attention dropout .*out_dropout"):
            tiny_config(**base, **{"attention.dropout": 0.1})


def test_flex_kernel_trains_with_output_dropout():
    torch.manual_seed(0)
    model = FlexBertForMaskedLM(tiny_config(**{"attention.kernel": "flex",
                                               "attention.out_dropout": P}))
    train = _capture(model, train=True)
    assert (train["attn_out"] == 0).float().mean().item() > 0.3


def test_out_dropout_must_be_a_probability():
    with pytest.raises(ConfigError, match=r"model\.attention\.out_dropout: must be in \[0, 1\)"):
        tiny_config(**{"attention.out_dropout": 1.0})


def test_transformers_config_carries_probability_dropout_and_reads_back_into_both():
    from transformers import ModernBertConfig

    cfg = tiny_config(num_layers=4, **{"attention.dropout": 0.05, "attention.out_dropout": 0.1})
    hf = ModernBertConfig(**hf_config_dict(cfg))
    assert hf.attention_dropout == 0.05  # ModernBertConfig has no separate output dropout
    back = flex_config_from_hf(hf)
    # transformers applies attention_dropout to probabilities and output alike
    assert (back.attention.dropout, back.attention.out_dropout) == (0.05, 0.05)
