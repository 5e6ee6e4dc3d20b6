"""`model.init_from`: continual pretraining from weights, with a fresh optimizer and schedule.

A source is a Composer checkpoint file (ours), a sharded checkpoint folder, a FlexBERT model
directory (`flexbert.yaml`), a Hugging Face ModernBERT folder (a published one, or any
`save_pretrained` output) or a Hub name such as `answerdotai/ModernBERT-base`. Reading them is
`flexbert.io.checkpoint_reader`'s job; this module decides the architecture.

Architecture: with a `model.preset` in the recipe, the preset (plus the recipe's keys) decides and
the source's weights must fit it exactly. Without a preset, the source's own config decides and
the recipe's model keys override it (e.g. `position.global_theta`, `attention.kernel`,
`sparse_prediction`).
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from flexbert.io.checkpoint_reader import (hf_source_config, load_weights, read_source,
                                        source_config_tree, source_kind)
from flexbert.config import ConfigError, ModelConfig
from flexbert.model import model_config
from flexbert.model import FlexBertForMaskedLM

KEY = "model.init_from"


def source_model_config(source: str, overrides: Any, recipe: str = "<recipe>",
                        trust: bool = False) -> ModelConfig:
    """The ModelConfig of `source`, with the recipe's model keys merged over it."""
    overrides = OmegaConf.create({} if overrides is None else overrides)
    try:
        base = source_config_tree(source, trust, KEY)
    except ConfigError as err:
        raise ConfigError(f"{recipe}: {err}") from None
    if base is not None:
        return model_config(OmegaConf.merge(base, overrides), recipe, "model")
    from flexbert.io.hf import flex_config_from_hf

    if source_kind(source, KEY) != "hf":
        raise ConfigError(f"{recipe}: {KEY}: {source} carries no model config; set "
                          "model.preset to the architecture it was trained with")
    hf_config, mask_id = hf_source_config(source, KEY)
    extra = OmegaConf.to_container(overrides)
    if "mask_token_id" not in extra and getattr(hf_config, "mask_token_id", None) is None \
            and mask_id is not None:
        extra["mask_token_id"] = mask_id
    return flex_config_from_hf(hf_config, **extra)


def load_init_weights(model: FlexBertForMaskedLM, source: str, trust: bool = False) -> None:
    """Copy the source's weights into `model` (every parameter, same shapes, or an error)."""
    load_weights(model, read_source(source, trust, KEY).weights, f"{KEY}={source}")

