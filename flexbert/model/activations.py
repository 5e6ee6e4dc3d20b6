"""Activation functions by name, shared by the MLP and the MLM/classifier heads."""

from __future__ import annotations

import torch.nn as nn

from flexbert.registry import ACTIVATIONS

# The names transformers' ACT2FN uses for the same function, for the Hugging Face round trip.
HF_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "silu": "silu", "relu": "relu"}

ACTIVATIONS.register("gelu", "exact GELU (erf), ModernBERT's GeGLU")(lambda: nn.GELU())
ACTIVATIONS.register("gelu_tanh", "tanh-approximated GELU")(lambda: nn.GELU(approximate="tanh"))
ACTIVATIONS.register("silu", "SiLU / swish (SwiGLU when used in a GLU)")(lambda: nn.SiLU())
ACTIVATIONS.register("relu", "ReLU")(lambda: nn.ReLU())
