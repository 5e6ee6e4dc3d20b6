"""Parity with transformers' ModernBertForMaskedLM, the oracle for the interchange format."""

from __future__ import annotations

import pytest
import torch
from transformers import ModernBertConfig, ModernBertForMaskedLM

from flexbert.cli import main as cli
from flexbert.model import load_model_config
from flexbert.io.hf import (UnsupportedConversion, from_transformers, load_flexbert, save_flexbert,
                         to_transformers)
from flexbert.model import FlexBertForMaskedLM
from tests.helpers import mixed_batch, tiny_config

HF_TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
               num_attention_heads=4, global_attn_every_n_layers=2, local_attention=6,
               global_rope_theta=160000.0, local_rope_theta=10000.0, max_position_embeddings=256,
               pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
LENGTHS = [23, 9, 16, 2]


def _random_hf() -> ModernBertForMaskedLM:
    torch.manual_seed(0)
    cfg = ModernBertConfig(**HF_TINY)
    cfg._attn_implementation = "sdpa"
    model = ModernBertForMaskedLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _logits(model, ids, mask, hf: bool):
    with torch.no_grad():
        if hf:
            return model(input_ids=ids, attention_mask=mask).logits
        return model(ids, mask).logits


def test_from_transformers_gives_the_same_logits():
    hf = _random_hf()
    flex = from_transformers(hf, sparse_prediction=False).eval()
    ids, mask = mixed_batch(LENGTHS)
    real = mask.bool()
    want, got = _logits(hf, ids, mask, True)[real], _logits(flex, ids, mask, False)[real]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_converted_model_keeps_global_and_local_theta():
    flex = from_transformers(_random_hf())
    assert flex.config.position.global_theta == 160000.0
    assert flex.config.position.local_theta == 10000.0
    assert flex.config.attention.local_window == 6
    assert [layer.attn.is_global for layer in flex.model.layers] == [True, False, True, False]


def test_to_transformers_gives_the_same_logits_and_round_trips_exactly():
    torch.manual_seed(1)
    flex = FlexBertForMaskedLM(tiny_config(num_layers=4)).eval()
    hf = to_transformers(flex)
    ids, mask = mixed_batch(LENGTHS)
    real = mask.bool()
    torch.testing.assert_close(_logits(hf, ids, mask, True)[real],
                               _logits(flex, ids, mask, False)[real], atol=1e-5, rtol=0)
    back = from_transformers(hf, sparse_prediction=False)
    original, returned = flex.state_dict(), back.state_dict()
    assert original.keys() == returned.keys()
    for name in original:
        assert torch.equal(original[name], returned[name]), name
    assert back.decoder.weight.data_ptr() == back.model.embeddings.tok_embeddings.weight.data_ptr()


@pytest.mark.parametrize("key, value, fragment", [
    ("norm.type", "rmsnorm", "model.norm.type='rmsnorm'"),
    ("layer", "postnorm", "model.layer='postnorm'"),
    ("position.type", "absolute", "model.position.type='absolute'"),
    ("attention.out_bias", True, "model.attention.out_bias=True"),
    ("mlp.type", "mlp", "model.mlp.type='mlp'"),
])
def test_to_transformers_refuses_what_modernbert_cannot_hold(key, value, fragment):
    flex = FlexBertForMaskedLM(tiny_config(**{key: value}))
    with pytest.raises(UnsupportedConversion, match=fragment.replace("[", r"\[")):
        to_transformers(flex)


def test_base_preset_has_modernbert_base_parameter_count(repo):
    cfg = load_model_config(repo / "configs/model/base.yaml")
    from flexbert.io.hf import hf_config_dict

    with torch.device("meta"):
        flex = FlexBertForMaskedLM(cfg)
        hf = ModernBertForMaskedLM(ModernBertConfig(**hf_config_dict(cfg)))
    hf_count = sum(p.numel() for p in hf.parameters())
    assert flex.num_parameters() == hf_count
    assert 149_000_000 < hf_count < 150_000_000


def test_cli_from_hf_then_to_hf_preserves_logits(tmp_path):
    hf = _random_hf()
    hf.save_pretrained(tmp_path / "hf")
    assert cli(["from-hf", str(tmp_path / "hf"), str(tmp_path / "flex")]) == 0
    assert (tmp_path / "flex" / "flexbert.yaml").is_file()
    assert cli(["to-hf", str(tmp_path / "flex"), str(tmp_path / "hf2")]) == 0
    again = ModernBertForMaskedLM.from_pretrained(tmp_path / "hf2", attn_implementation="sdpa")
    ids, mask = mixed_batch(LENGTHS)
    real = mask.bool()
    torch.testing.assert_close(_logits(again.eval(), ids, mask, True)[real],
                               _logits(hf, ids, mask, True)[real], atol=1e-5, rtol=0)


def test_flexbert_directory_round_trip_and_bad_files(tmp_path):
    torch.manual_seed(2)
    flex = FlexBertForMaskedLM(tiny_config(**{"norm.type": "rmsnorm", "layer": "parallel"}))
    save_flexbert(flex, tmp_path / "m")
    loaded = load_flexbert(tmp_path / "m")
    assert loaded.config == flex.config
    for name, tensor in flex.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file"):
        load_flexbert(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match=r"flexbert.yaml: missing"):
        load_flexbert(tmp_path / "nowhere")
