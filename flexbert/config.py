"""Typed model configuration (schema only): YAML -> structured OmegaConf dataclasses.

The YAML tree mirrors the module tree (model.attention, model.mlp, ...). Unknown keys and wrong
types are caught here by OmegaConf's structured merge; the rules that need the implementations
(registered names, kernel/layout pairs) live in flexbert.model.config_check, whose
`model_config` / `load_model_config` are the loaders to call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flexbert.errors import ConfigError  # noqa: F401  (re-exported: raised by every loader)


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


def to_yaml(cfg: ModelConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def __getattr__(name: str):
    # Loaders that validate against the implementations moved up to flexbert.model (0.2).
    from flexbert._aliases import moved_attribute

    return moved_attribute(__name__, name)
