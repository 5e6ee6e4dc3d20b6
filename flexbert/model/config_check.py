"""Model config validation against the implementations: registered names, kernel/layout pairs
and cross-field rules, each failure naming the YAML path, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from flexbert import registry
from flexbert.config import PROBLEM_TYPES, ModelConfig, load_yaml, structured
from flexbert.errors import ConfigError
from flexbert.model.attention.kernels import kernels_for
from flexbert.plugins import load_entry_point_plugins


def model_config(data: Any, source: str = "<config>", prefix: str = "model") -> ModelConfig:
    """Build and validate a ModelConfig from a mapping (YAML subtree or dict)."""
    merged = structured(ModelConfig, data, source, prefix)
    cfg: ModelConfig = OmegaConf.to_object(merged)
    validate_model_config(cfg, source, prefix)
    return cfg


def load_model_config(path: str | Path, overrides: Sequence[str] = ()) -> ModelConfig:
    """Load a model preset: a YAML whose top level is either the model tree or has `model:`."""
    cfg = load_yaml(path, overrides)
    tree = cfg.model if "model" in cfg else cfg
    return model_config(tree, str(path))


def resolve_model_tree(tree: Any, recipe_path: Path) -> DictConfig:
    """Load `preset` (relative to the recipe's folder, or absolute) and merge the recipe's own
    model keys over it."""
    tree = OmegaConf.create({} if tree is None else tree)
    preset = tree.pop("preset", None)
    if preset is None:
        return tree
    path = Path(preset)
    if not path.is_absolute():
        path = recipe_path.parent / path
    base = load_yaml(path)
    base = base.model if "model" in base else base
    return OmegaConf.merge(base, tree)


def recipe_model_config(path: str | Path) -> ModelConfig:
    """The model of a training recipe (its `model.preset` resolved), without the rest of the
    recipe: what publishing and fine-tuning need from the YAML a checkpoint was trained with."""
    raw = load_yaml(path)
    tree = resolve_model_tree(raw.get("model"), Path(path))
    tree.pop("init_from", None)
    return model_config(tree, str(path))


def validate_model_config(cfg: ModelConfig, source: str = "<config>", prefix: str = "model") -> None:
    """Cross-field rules; each failure names the key path, the value and what is allowed."""
    load_entry_point_plugins()  # built-in families are registered by importing flexbert.model

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{source}: {prefix}.{key}: {message}")

    def positive(key: str, value: float) -> None:
        if value <= 0:
            fail(key, f"must be > 0, got {value}")

    def probability(key: str, value: float) -> None:
        if not 0.0 <= value < 1.0:
            fail(key, f"must be in [0, 1), got {value}")

    for key in ("vocab_size", "hidden_size", "num_layers", "max_position_embeddings",
                "attention.num_heads", "mlp.intermediate_size", "attention.global_every_n_layers",
                "norm.eps", "init.std"):
        positive(key, OmegaConf.select(OmegaConf.structured(cfg), key))
    for key in ("attention.dropout", "attention.out_dropout", "mlp.dropout", "embeddings.dropout", "classifier.dropout"):
        probability(key, OmegaConf.select(OmegaConf.structured(cfg), key))

    for key, family in REGISTRY_KEYS.items():
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
        if value not in family:
            fail(key, f"unknown {family.family} {value!r}; allowed: {', '.join(family.names())}")

    attn = cfg.attention
    if cfg.hidden_size % attn.num_heads:
        fail("attention.num_heads",
             f"{attn.num_heads} heads do not divide hidden_size {cfg.hidden_size}")
    if cfg.position.type == "rope" and cfg.head_dim % 2:
        fail("attention.num_heads", f"rotary needs an even head dim, got {cfg.head_dim}")
    if attn.local_window < 0 or attn.local_window % 2:
        fail("attention.local_window",
             f"must be an even number >= 0 (split evenly to both sides), got {attn.local_window}")
    kernel = registry.KERNELS.get(attn.kernel)
    layout = registry.PADDINGS.get(cfg.padding).layout
    if layout not in kernel.layouts:
        fail("attention.kernel", f"{attn.kernel!r} cannot serve the {cfg.padding!r} layout; "
             f"kernels for {layout}: {', '.join(kernels_for(layout))}")
    if not kernel.supports_window and any(not cfg.is_global_layer(i) for i in range(cfg.num_layers)):
        fail("attention.local_window", f"kernel {attn.kernel!r} has no sliding window in this "
             "torch; set 0 (every layer global) or use the flex or flash_attn kernel")
    if attn.dropout > 0 and not kernel.supports_dropout:
        fail("attention.dropout", f"kernel {attn.kernel!r} has no attention dropout (of the "
             "probabilities); set 0 (attention.out_dropout works with every kernel)")
    for key in ("bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id",
                "mask_token_id", "pad_token_id"):
        value = getattr(cfg, key)
        if not 0 <= value < cfg.vocab_size:
            fail(key, f"token id {value} outside the vocabulary [0, {cfg.vocab_size})")
    if cfg.classifier.problem_type not in PROBLEM_TYPES:
        fail("classifier.problem_type", f"unknown {cfg.classifier.problem_type!r}; allowed: "
             f"{', '.join(PROBLEM_TYPES)}")
    if cfg.classifier.num_labels < 1:
        fail("classifier.num_labels", f"must be >= 1, got {cfg.classifier.num_labels}")


REGISTRY_KEYS = {
    "layer": registry.LAYERS,
    "padding": registry.PADDINGS,
    "attention.type": registry.ATTENTIONS,
    "attention.kernel": registry.KERNELS,
    "position.type": registry.POSITIONS,
    "mlp.type": registry.MLPS,
    "mlp.activation": registry.ACTIVATIONS,
    "norm.type": registry.NORMS,
    "embeddings.type": registry.EMBEDDINGS,
    "head.activation": registry.ACTIVATIONS,
    "classifier.pooling": registry.POOLINGS,
    "init.type": registry.INITS,
}


