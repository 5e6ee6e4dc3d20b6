"""Typed model configuration: YAML -> structured OmegaConf -> validated dataclasses.

The YAML tree mirrors the module tree (model.attention, model.mlp, ...). Unknown keys and wrong
types are caught by OmegaConf's structured merge; cross-field rules live in `validate_model_config`
so every error names the config path before anything is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class AttentionConfig:
    type: str = "mha"
    num_heads: int = 12
    kernel: str = "sdpa"
    # Layer i is global when i % global_every_n_layers == 0; 1 makes every layer global.
    global_every_n_layers: int = 3
    # Total sliding window of local layers (half to each side); 0 disables local attention.
    local_window: int = 128
    qkv_bias: bool = False
    out_bias: bool = False
    # `dropout` drops attention probabilities (inside the kernel; kernels without dropout refuse
    # it); `out_dropout` drops the output projection's result (any kernel). ModernBERT pretrained
    # with 0 and 0.1 (its attention_probs_dropout_prob and attn_out_dropout_prob).
    dropout: float = 0.0
    out_dropout: float = 0.0


@dataclass
class PositionConfig:
    type: str = "rope"
    global_theta: float = 10000.0
    local_theta: float = 10000.0


@dataclass
class MLPConfig:
    type: str = "glu"
    intermediate_size: int = 1152
    activation: str = "gelu"
    bias: bool = False
    dropout: float = 0.0


@dataclass
class NormConfig:
    type: str = "layernorm"
    eps: float = 1e-5
    bias: bool = False


@dataclass
class EmbeddingConfig:
    type: str = "token"
    norm: bool = True
    dropout: float = 0.0


@dataclass
class HeadConfig:
    activation: str = "gelu"
    dense_bias: bool = False
    decoder_bias: bool = True
    tie_word_embeddings: bool = True


@dataclass
class ClassifierConfig:
    num_labels: int = 2
    pooling: str = "cls"
    dropout: float = 0.0
    # "single_label_classification", "multi_label_classification" or "regression".
    problem_type: str = "single_label_classification"


@dataclass
class InitConfig:
    type: str = "megatron"
    std: float = 0.02
    cutoff_factor: float = 2.0


@dataclass
class ModelConfig:
    vocab_size: int = 50368
    hidden_size: int = 768
    num_layers: int = 22
    max_position_embeddings: int = 8192
    layer: str = "prenorm"
    padding: str = "unpadded"
    # Only masked tokens reach the MLM head and the loss.
    sparse_prediction: bool = True
    # ModernBERT skips layer 0's attention norm: the embedding norm has just normalised.
    first_layer_attn_norm: bool = False
    final_norm: bool = True
    pad_token_id: int = 50283
    bos_token_id: int = 50281
    eos_token_id: int = 50282
    cls_token_id: int = 50281
    sep_token_id: int = 50282
    mask_token_id: int = 50284
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    position: PositionConfig = field(default_factory=PositionConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    embeddings: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    init: InitConfig = field(default_factory=InitConfig)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.attention.num_heads

    def is_global_layer(self, index: int) -> bool:
        attn = self.attention
        return attn.local_window == 0 or index % attn.global_every_n_layers == 0


PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


class ConfigError(ValueError):
    """A config that cannot be built; the message names the YAML path and what was expected."""


def structured(schema: type, data: Any, source: str, prefix: str = "") -> Any:
    """Merge `data` onto the dataclass `schema`, turning OmegaConf's errors into ConfigError."""
    base = OmegaConf.structured(schema)
    try:
        merged = OmegaConf.merge(base, data)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        path = ".".join(p for p in (prefix, str(key)) if p)
        raise ConfigError(f"{source}: {path}: {_first_line(err)}{_allowed_keys(err)}") from None
    return merged


def _allowed_keys(err: OmegaConfBaseException) -> str:
    schema = getattr(err, "object_type", None)
    if not dataclasses.is_dataclass(schema) or "not in" not in str(err):
        return ""
    return "; allowed keys: " + ", ".join(f.name for f in dataclasses.fields(schema))


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def load_yaml(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Read a YAML file and apply `key=value` dotlist overrides, naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError carries the line and column
        raise ConfigError(f"{path}: not valid YAML: {_one_line(err)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for override in overrides:  # one at a time, so a bad one is named
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([override]))
        except Exception as err:  # OmegaConf's errors and yaml's (an unclosed `[1,2`)
            raise ConfigError(f"{path}: bad override {override!r}: {_one_line(err)}") from None
    return cfg


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


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


def validate_model_config(cfg: ModelConfig, source: str = "<config>", prefix: str = "model") -> None:
    """Cross-field rules; each failure names the key path, the value and what is allowed."""
    from flexbert import layers  # deferred: pulls in torch, which loading YAML does not need
    from flexbert.components import load_model_components

    load_model_components()  # built-in families and installed plugins

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

    for key, registry in _registry_keys(layers).items():
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
        if value not in registry:
            fail(key, f"unknown {registry.family} {value!r}; allowed: {', '.join(registry.names())}")

    attn = cfg.attention
    if cfg.hidden_size % attn.num_heads:
        fail("attention.num_heads",
             f"{attn.num_heads} heads do not divide hidden_size {cfg.hidden_size}")
    if cfg.position.type == "rope" and cfg.head_dim % 2:
        fail("attention.num_heads", f"rotary needs an even head dim, got {cfg.head_dim}")
    if attn.local_window < 0 or attn.local_window % 2:
        fail("attention.local_window",
             f"must be an even number >= 0 (split evenly to both sides), got {attn.local_window}")
    kernel = layers.KERNELS.get(attn.kernel)
    layout = layers.PADDINGS.get(cfg.padding).layout
    if layout not in kernel.layouts:
        fail("attention.kernel", f"{attn.kernel!r} cannot serve the {cfg.padding!r} layout; "
             f"kernels for {layout}: {', '.join(layers.kernels_for(layout))}")
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


def _registry_keys(layers: Any) -> dict[str, Any]:
    return {
        "layer": layers.LAYERS,
        "padding": layers.PADDINGS,
        "attention.type": layers.ATTENTIONS,
        "attention.kernel": layers.KERNELS,
        "position.type": layers.POSITIONS,
        "mlp.type": layers.MLPS,
        "mlp.activation": layers.ACTIVATIONS,
        "norm.type": layers.NORMS,
        "embeddings.type": layers.EMBEDDINGS,
        "head.activation": layers.ACTIVATIONS,
        "classifier.pooling": layers.POOLINGS,
        "init.type": layers.INITS,
    }


def to_yaml(cfg: ModelConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
