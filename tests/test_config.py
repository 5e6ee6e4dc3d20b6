"""Configs: every shipped YAML loads and validates; bad ones fail before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexbert.config import ConfigError, load_yaml
from flexbert.model import load_model_config
from flexbert.registry import Registry

REPO = Path(__file__).resolve().parents[1]
MODEL_PRESETS = sorted((REPO / "configs" / "model").glob("*.yaml"))
TINY = REPO / "configs" / "model" / "tiny.yaml"


def test_presets_exist():
    assert {p.stem for p in MODEL_PRESETS} >= {"tiny", "base", "large"}


@pytest.mark.parametrize("path", MODEL_PRESETS, ids=lambda p: p.name)
def test_every_model_preset_validates(path):
    cfg = load_model_config(path)
    assert cfg.hidden_size % cfg.attention.num_heads == 0


@pytest.mark.parametrize("name, layers, hidden, inter, heads", [
    ("base", 22, 768, 1152, 12), ("large", 28, 1024, 2624, 16)])
def test_presets_encode_the_recipe(name, layers, hidden, inter, heads):
    cfg = load_model_config(REPO / f"configs/model/{name}.yaml")
    assert (cfg.num_layers, cfg.hidden_size, cfg.mlp.intermediate_size) == (layers, hidden, inter)
    assert cfg.attention.num_heads == heads and cfg.head_dim == 64
    assert cfg.vocab_size == 50368 and cfg.vocab_size % 64 == 0
    assert (cfg.cls_token_id, cfg.sep_token_id, cfg.pad_token_id, cfg.mask_token_id) == (
        50281, 50282, 50283, 50284)
    assert cfg.attention.local_window == 128
    assert [i for i in range(layers) if cfg.is_global_layer(i)] == list(range(0, layers, 3))
    assert cfg.position.global_theta == cfg.position.local_theta == 10000.0
    assert (cfg.norm.type, cfg.norm.bias, cfg.norm.eps) == ("layernorm", False, 1e-5)
    assert (cfg.mlp.type, cfg.mlp.activation, cfg.mlp.bias) == ("glu", "gelu", False)
    assert not (cfg.attention.qkv_bias or cfg.attention.out_bias or cfg.head.dense_bias)
    assert cfg.head.decoder_bias and cfg.head.tie_word_embeddings and cfg.sparse_prediction
    assert (cfg.init.type, cfg.init.std, cfg.init.cutoff_factor) == ("megatron", 0.02, 2.0)


@pytest.mark.parametrize("override, message", [
    ("attention.windw=3", r"model\.attention\.windw: Key 'windw' not in 'AttentionConfig'; "
                          r"allowed keys: type, num_heads"),
    ("hidden_size=abc", r"model\.hidden_size: Value 'abc' .* could not be converted to Integer"),
    ("attention.local_window=7", r"model\.attention\.local_window: must be an even number"),
    ("attention.num_heads=5", r"model\.attention\.num_heads: 5 heads do not divide hidden_size 64"),
    ("mlp.type=swiglu", r"model\.mlp\.type: unknown mlp 'swiglu'; allowed: glu, mlp"),
    ("norm.type=batchnorm", r"model\.norm\.type: unknown norm 'batchnorm'; allowed: layernorm, "
                            r"rmsnorm"),
    ("attention.kernel=xformers", r"unknown attention kernel 'xformers'; allowed: flash_attn, flex, "
                                  r"sdpa, varlen_attn"),
    ("mlp.dropout=1.5", r"model\.mlp\.dropout: must be in \[0, 1\), got 1.5"),
    ("mask_token_id=5000", r"model\.mask_token_id: token id 5000 outside the vocabulary"),
])
def test_bad_values_name_the_key_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_model_config(TINY, [override])
    assert str(TINY) in str(info.value)


def test_kernel_that_cannot_serve_the_layout_is_refused():
    with pytest.raises(ConfigError, match=r"'flash_attn' cannot serve the 'padded' layout; "
                                          r"kernels for padded: flex, sdpa"):
        load_model_config(TINY, ["padding=padded", "attention.kernel=flash_attn"])


def test_dropout_on_a_kernel_without_it_is_refused():
    with pytest.raises(ConfigError, match="kernel 'flex' has no attention dropout"):
        load_model_config(TINY, ["attention.kernel=flex", "attention.dropout=0.1"])


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hidden_size: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_registry_lookup_lists_allowed_names():
    registry: Registry = Registry("widget", "entry() -> widget")
    registry.register("a")(object)
    registry.register("b")(object)
    with pytest.raises(ValueError, match=r"model\.widget: unknown widget 'c'; allowed: a, b"):
        registry.get("c", "model.widget")
    with pytest.raises(ValueError, match="already has an entry named 'a'"):
        registry.register("a")(object)
