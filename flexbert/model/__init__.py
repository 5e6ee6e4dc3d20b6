"""The encoder room: every model component family, assembled from a ModelConfig.

Importing this package registers the built-in entries of the model families declared in
flexbert.registry (attention, kernels, positions, MLPs, norms, ...).
"""

from flexbert.model import activations, blocks, embeddings, init, mlp, norm, pooling  # noqa: F401
from flexbert.model.attention import Attention
from flexbert.model.attention.kernels import KernelSpec, kernels_for
from flexbert.model.attention.layout import Layout, describe_batch
from flexbert.model.attention.rotary import build_position
from flexbert.model.config_check import (load_model_config, model_config, recipe_model_config,
                                         resolve_model_tree, validate_model_config)
from flexbert.model.encoder import (FlexBertForMaskedLM, FlexBertForSequenceClassification,
                                    FlexBertModel, FlexBertPreTrained, PredictionHead,
                                    classification_loss, real_token_labels)
from flexbert.model.norm import build_norm
from flexbert.registry import (ACTIVATIONS, ATTENTIONS, EMBEDDINGS, INITS, KERNELS, LAYERS, MLPS,
                               NORMS, PADDINGS, POOLINGS, POSITIONS)

__all__ = [
    "ACTIVATIONS", "ATTENTIONS", "Attention", "EMBEDDINGS", "FlexBertForMaskedLM",
    "FlexBertForSequenceClassification", "FlexBertModel", "FlexBertPreTrained", "INITS", "KERNELS",
    "KernelSpec", "LAYERS", "Layout", "MLPS", "NORMS", "PADDINGS", "POOLINGS", "POSITIONS",
    "PredictionHead", "build_norm", "build_position", "classification_loss", "describe_batch",
    "kernels_for", "load_model_config", "model_config", "real_token_labels", "recipe_model_config",
    "resolve_model_tree", "validate_model_config",
]
