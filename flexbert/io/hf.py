"""To and from transformers' ModernBERT, and FlexBERT's own model directory format.

A FlexBERT model directory holds `flexbert.yaml` (the resolved ModelConfig) and
`model.safetensors`. ModernBERT can express only part of FlexBERT's design space; anything it
cannot hold raises `UnsupportedConversion` naming the config key, instead of being dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from flexbert.config import ModelConfig, to_yaml
from flexbert.model import model_config
from flexbert.model.activations import HF_NAMES
from flexbert.model import FlexBertForMaskedLM

CONFIG_FILE = "flexbert.yaml"
WEIGHTS_FILE = "model.safetensors"


class UnsupportedConversion(ValueError):
    """The FlexBERT config uses something transformers' ModernBERT cannot represent."""


# Our parameter names map one to one onto ModernBERT's: same module tree, `model.` prefix included.
def _is_rotary_buffer(name: str) -> bool:
    return "inv_freq" in name


def _hf_activation(name: str, key: str) -> str:
    if name not in HF_NAMES:
        raise UnsupportedConversion(f"model.{key}: {name!r} has no transformers equivalent")
    return HF_NAMES[name]


def _flex_activation(name: str, key: str) -> str:
    reverse = {hf: ours for ours, hf in HF_NAMES.items()}
    reverse["gelu_new"] = "gelu_tanh"
    if name not in reverse:
        raise UnsupportedConversion(f"{key}: activation {name!r} has no FlexBERT equivalent; "
                                    f"allowed: {', '.join(sorted(reverse))}")
    return reverse[name]


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise UnsupportedConversion(
            f"model.{key}={value!r} cannot be expressed by transformers' ModernBERT "
            f"(it needs {expected})")


def check_expressible(cfg: ModelConfig) -> None:
    """Every FlexBERT choice ModernBERT hard-codes must be at ModernBERT's value."""
    a = cfg.attention
    _require(cfg.layer == "prenorm", "layer", cfg.layer, "prenorm")
    _require(not cfg.first_layer_attn_norm, "first_layer_attn_norm", cfg.first_layer_attn_norm,
             "false: layer 0 has no attention norm")
    _require(cfg.final_norm, "final_norm", cfg.final_norm, "true")
    _require(cfg.embeddings.type == "token" and cfg.embeddings.norm, "embeddings.norm",
             cfg.embeddings.norm, "token embeddings followed by a norm")
    _require(cfg.norm.type == "layernorm", "norm.type", cfg.norm.type, "layernorm")
    _require(cfg.position.type == "rope", "position.type", cfg.position.type, "rope")
    _require(cfg.mlp.type == "glu", "mlp.type", cfg.mlp.type, "glu")
    _require(a.type == "mha", "attention.type", a.type, "mha")
    _require(a.qkv_bias == a.out_bias, "attention.out_bias", a.out_bias,
             f"the same value as attention.qkv_bias ({a.qkv_bias}): one attention_bias switch")
    _require(cfg.head.tie_word_embeddings, "head.tie_word_embeddings",
             cfg.head.tie_word_embeddings, "true")
    _require(cfg.mlp.activation in HF_NAMES, "mlp.activation", cfg.mlp.activation,
             f"one of {', '.join(HF_NAMES)}")


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The ModernBertConfig keyword arguments that describe `cfg`.

    ModernBertConfig has one `attention_dropout` for probabilities and output; it gets
    `attention.dropout` (probabilities), as the research repo's own converter does, and
    `attention.out_dropout` is not carried (dropout changes training only, never the weights or
    the logits of a published model).
    """
    check_expressible(cfg)
    a = cfg.attention
    all_global = a.local_window == 0 or a.global_every_n_layers == 1
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.mlp.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=a.num_heads, max_position_embeddings=cfg.max_position_embeddings,
        global_attn_every_n_layers=1 if all_global else a.global_every_n_layers,
        local_attention=a.local_window if a.local_window else 128,
        global_rope_theta=cfg.position.global_theta, local_rope_theta=cfg.position.local_theta,
        hidden_activation=_hf_activation(cfg.mlp.activation, "mlp.activation"),
        classifier_activation=_hf_activation(cfg.head.activation, "head.activation"),
        norm_eps=cfg.norm.eps, norm_bias=cfg.norm.bias, attention_bias=a.qkv_bias,
        mlp_bias=cfg.mlp.bias, classifier_bias=cfg.head.dense_bias,
        decoder_bias=cfg.head.decoder_bias, embedding_dropout=cfg.embeddings.dropout,
        attention_dropout=a.dropout, mlp_dropout=cfg.mlp.dropout,
        classifier_dropout=cfg.classifier.dropout, classifier_pooling=cfg.classifier.pooling,
        num_labels=cfg.classifier.num_labels, initializer_range=cfg.init.std,
        initializer_cutoff_factor=cfg.init.cutoff_factor, sparse_prediction=cfg.sparse_prediction,
        pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id, cls_token_id=cfg.cls_token_id,
        sep_token_id=cfg.sep_token_id, tie_word_embeddings=True,
    )


def _rope_thetas(c: Any) -> dict[str, float]:
    """Global and local rope theta from either transformers 4 (`global_rope_theta`,
    `local_rope_theta`) or transformers 5 (`rope_parameters` per layer type)."""
    params = getattr(c, "rope_parameters", None)
    if isinstance(params, dict) and "full_attention" in params:
        global_theta = params["full_attention"]["rope_theta"]
        local_theta = params.get("sliding_attention", params["full_attention"])["rope_theta"]
    else:
        global_theta = c.global_rope_theta
        local_theta = getattr(c, "local_rope_theta", None) or global_theta
    return {"global_theta": float(global_theta), "local_theta": float(local_theta)}


def flex_config_from_hf(hf_config: Any, **overrides: Any) -> ModelConfig:
    """A FlexBERT ModelConfig equal to a transformers ModernBertConfig."""
    c = hf_config
    if getattr(c, "model_type", None) != "modernbert":
        raise UnsupportedConversion(f"model_type {getattr(c, 'model_type', None)!r} is not "
                                    "'modernbert'")
    every = c.global_attn_every_n_layers
    tree = dict(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
        max_position_embeddings=c.max_position_embeddings, layer="prenorm",
        sparse_prediction=bool(getattr(c, "sparse_prediction", False)),
        pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        cls_token_id=c.cls_token_id, sep_token_id=c.sep_token_id,
        mask_token_id=getattr(c, "mask_token_id", None) or _mask_id_guess(c),
        attention=dict(num_heads=c.num_attention_heads, global_every_n_layers=every,
                       local_window=0 if every == 1 else c.local_attention,
                       qkv_bias=c.attention_bias, out_bias=c.attention_bias,
                       # transformers drops both probabilities and output with this one value
                       dropout=c.attention_dropout, out_dropout=c.attention_dropout),
        position=dict(type="rope", **_rope_thetas(c)),
        mlp=dict(type="glu", intermediate_size=c.intermediate_size, bias=c.mlp_bias,
                 activation=_flex_activation(c.hidden_activation, "hidden_activation"),
                 dropout=c.mlp_dropout),
        norm=dict(type="layernorm", eps=c.norm_eps, bias=c.norm_bias),
        embeddings=dict(type="token", norm=True, dropout=c.embedding_dropout),
        head=dict(activation=_flex_activation(c.classifier_activation, "classifier_activation"),
                  dense_bias=c.classifier_bias, decoder_bias=c.decoder_bias),
        classifier=dict(num_labels=c.num_labels, pooling=c.classifier_pooling,
                        dropout=c.classifier_dropout),
        init=dict(type="megatron", std=c.initializer_range,
                  cutoff_factor=c.initializer_cutoff_factor or 2.0),
    )
    merged = OmegaConf.merge(OmegaConf.create(tree), OmegaConf.create(overrides))
    return model_config(merged, source="transformers config")


def _mask_id_guess(c: Any) -> int:
    # ModernBERT's config has no mask id; its tokenizer puts [MASK] right after [PAD].
    return min(c.pad_token_id + 1, c.vocab_size - 1)


def from_transformers(hf_model: Any, **overrides: Any) -> FlexBertForMaskedLM:
    """transformers.ModernBertForMaskedLM (or a folder / hub name) -> FlexBertForMaskedLM."""
    if isinstance(hf_model, (str, Path)):
        from transformers import ModernBertForMaskedLM

        from flexbert.io.trust import refuse_custom_code

        refuse_custom_code(hf_model)
        try:  # safetensors only: a pytorch_model.bin would be unpickled
            hf_model = ModernBertForMaskedLM.from_pretrained(str(hf_model), use_safetensors=True)
        except OSError as err:
            from flexbert.config import ConfigError

            raise ConfigError(f"{hf_model}: {(str(err).strip().splitlines() or [''])[0]} "
                              "(FlexBERT reads model.safetensors only: a pytorch_model.bin is a "
                              "pickle that could run code)") from None
    cfg = flex_config_from_hf(hf_model.config, **overrides)
    model = FlexBertForMaskedLM(cfg)
    state = {k: v for k, v in hf_model.state_dict().items() if not _is_rotary_buffer(k)}
    _load_exact(model, state, "transformers model")
    return model


def to_transformers(model: FlexBertForMaskedLM) -> Any:
    """FlexBertForMaskedLM -> transformers.ModernBertForMaskedLM with identical weights."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    hf_cfg = ModernBertConfig(**hf_config_dict(model.config))
    hf_cfg._attn_implementation = "sdpa"
    hf_model = ModernBertForMaskedLM(hf_cfg).to(next(model.parameters()).dtype)
    state = {k: v for k, v in model.state_dict().items() if not _is_rotary_buffer(k)}
    _load_exact(hf_model, state, "FlexBERT model")
    return hf_model.eval() if not model.training else hf_model


def _load_exact(target: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy every weight; any name missing on either side is an error, not a silent skip."""
    result = target.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not _is_rotary_buffer(k) and k != "decoder.weight"]
    if missing or result.unexpected_keys:
        raise UnsupportedConversion(
            f"{source}: weights do not line up; missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}")
    if hasattr(target, "tie_weights"):
        target.tie_weights()


PathLike = Union[str, Path]


def save_flexbert(model: FlexBertForMaskedLM, out_dir: PathLike) -> Path:
    """Write a FlexBERT model directory: resolved YAML config + safetensors weights."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(to_yaml(model.config))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if k != "decoder.weight" or not model.config.head.tie_word_embeddings}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt", "library": "flexbert"})
    return out


def load_flexbert(model_dir: PathLike) -> FlexBertForMaskedLM:
    """Read a directory written by `save_flexbert`; errors name the file that is wrong."""
    root = Path(model_dir)
    cfg_path, weights = root / CONFIG_FILE, root / WEIGHTS_FILE
    for path in (cfg_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; a FlexBERT model directory holds "
                                    f"{CONFIG_FILE} and {WEIGHTS_FILE}")
    cfg = model_config(OmegaConf.load(cfg_path), source=str(cfg_path))
    model = FlexBertForMaskedLM(cfg)
    try:
        state = load_file(str(weights))
    except Exception as err:
        raise ValueError(f"{weights}: not a readable safetensors file ({err})") from None
    _load_exact(model, state, str(weights))
    return model


def save_hf(model: FlexBertForMaskedLM, out_dir: PathLike, tokenizer: Any = None,
            **config_extra: Any) -> Path:
    """Write a Hugging Face ModernBERT folder (config.json + model.safetensors [+ tokenizer]);
    `config_extra` adds keys to config.json (ModernBertConfig keeps unknown keys)."""
    out = Path(out_dir)
    hf_model = to_transformers(model)
    for key, value in config_extra.items():
        setattr(hf_model.config, key, value)
    hf_model.save_pretrained(str(out), safe_serialization=True)
    _write_both_rope_forms(out / "config.json", model.config)
    if tokenizer is not None:
        from data_prep.tokenizer import save_tokenizer

        save_tokenizer(tokenizer, out)
    return out


def _write_both_rope_forms(path: Path, cfg: ModelConfig) -> None:
    """transformers 4 reads `global_rope_theta`/`local_rope_theta`, 5 writes and prefers
    `rope_parameters`; a folder saved by either must load with the right thetas in both, or a
    phase-1 model (theta 10k) would silently run at the default 160k."""
    conf = json.loads(path.read_text())
    g, loc = float(cfg.position.global_theta), float(cfg.position.local_theta)
    conf["global_rope_theta"], conf["local_rope_theta"] = g, loc
    conf["rope_parameters"] = {"full_attention": {"rope_type": "default", "rope_theta": g},
                               "sliding_attention": {"rope_type": "default", "rope_theta": loc}}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_hf_config(model_dir: PathLike) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "config.json").read_text())
