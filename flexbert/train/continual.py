"""`model.init_from`: continual pretraining from weights, with a fresh optimizer and schedule.

A source is a Composer checkpoint file (ours), a FlexBERT model directory (`flexbert.yaml`), a
Hugging Face ModernBERT folder (a published one, or any `save_pretrained` output) or a Hub name
such as `answerdotai/ModernBERT-base` (through `flexbert.hf.from_transformers`).

Architecture: with a `model.preset` in the recipe, the preset (plus the recipe's keys) decides and
the source's weights must fit it exactly. Without a preset, the source's own config decides and
the recipe's model keys override it (e.g. `position.global_theta`, `attention.kernel`,
`sparse_prediction`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from flexbert.config import ConfigError, ModelConfig, model_config
from flexbert.model import FlexBertForMaskedLM


def _kind(source: str) -> str:
    if os.path.isfile(source):
        return "composer"
    if os.path.isdir(source) and (Path(source) / "flexbert.yaml").is_file():
        return "flexbert"
    if os.path.isdir(source) and not (Path(source) / "config.json").is_file():
        raise ConfigError(f"model.init_from: {source}: a folder without config.json or "
                          "flexbert.yaml")
    return "hf"  # a Hugging Face folder, or a Hub name


def _mask_id_from_tokenizer(source: str) -> int | None:
    """The tokenizer's [MASK] id when the source has a tokenizer (HF configs carry none)."""
    if os.path.isdir(source) and not any(
            (Path(source) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source).mask_token_id
    except (OSError, ValueError):
        return None


def source_model_config(source: str, overrides: Any, recipe: str = "<recipe>") -> ModelConfig:
    """The ModelConfig of `source`, with the recipe's model keys merged over it."""
    overrides = OmegaConf.create({} if overrides is None else overrides)
    kind = _kind(source)
    if kind == "composer":
        from flexbert.train.publish import checkpoint_info, read_checkpoint

        info = checkpoint_info(read_checkpoint(source), source)
        if not info.get("model_config"):
            raise ConfigError(f"{recipe}: model.init_from: {source} carries no model config; "
                              "set model.preset to the architecture it was trained with")
        base = OmegaConf.create(info["model_config"])
        return model_config(OmegaConf.merge(base, overrides), recipe, "model")
    if kind == "flexbert":
        base = OmegaConf.load(Path(source) / "flexbert.yaml")
        return model_config(OmegaConf.merge(base, overrides), recipe, "model")
    from transformers import AutoConfig

    from flexbert.hf import flex_config_from_hf

    hf_config = AutoConfig.from_pretrained(source)
    extra = OmegaConf.to_container(overrides)
    if "mask_token_id" not in extra and getattr(hf_config, "mask_token_id", None) is None:
        mask_id = _mask_id_from_tokenizer(source)
        if mask_id is not None:
            extra["mask_token_id"] = mask_id
    return flex_config_from_hf(hf_config, **extra)


def source_weights(source: str) -> dict:
    """Parameter name -> tensor, in FlexBERT's (= ModernBERT's) names."""
    kind = _kind(source)
    if kind == "composer":
        from flexbert.train.publish import model_state, read_checkpoint

        return model_state(read_checkpoint(source))
    if kind == "flexbert":
        from safetensors.torch import load_file

        return load_file(str(Path(source) / "model.safetensors"))
    from transformers import ModernBertForMaskedLM

    return ModernBertForMaskedLM.from_pretrained(source).state_dict()


def load_init_weights(model: FlexBertForMaskedLM, source: str) -> None:
    """Copy the source's weights into `model` (every parameter, same shapes, or an error)."""
    from flexbert.train.publish import load_weights

    load_weights(model, source_weights(source), f"model.init_from={source}")


def load_source_model(source: str, **overrides: Any) -> FlexBertForMaskedLM:
    model = FlexBertForMaskedLM(source_model_config(source, overrides))
    load_init_weights(model, source)
    return model
