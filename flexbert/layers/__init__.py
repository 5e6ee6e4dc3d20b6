"""The model's component families; importing this module registers the built-in entries
(flexbert.components also loads plugins)."""

from flexbert.init import INITS
from flexbert.layers.activations import ACTIVATIONS
from flexbert.layers.attention import ATTENTIONS, Attention
from flexbert.layers.blocks import LAYERS
from flexbert.layers.embeddings import EMBEDDINGS
from flexbert.layers.kernels import KERNELS, KernelSpec, kernels_for
from flexbert.layers.mlp import MLPS
from flexbert.layers.norm import NORMS, build_norm
from flexbert.layers.pooling import POOLINGS
from flexbert.layers.rotary import POSITIONS, build_position
from flexbert.padding import PADDINGS

__all__ = [
    "ACTIVATIONS", "ATTENTIONS", "Attention", "EMBEDDINGS", "INITS", "KERNELS", "KernelSpec",
    "LAYERS", "MLPS", "NORMS", "PADDINGS", "POOLINGS", "POSITIONS", "build_norm",
    "build_position", "kernels_for",
]
