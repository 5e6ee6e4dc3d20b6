"""Device and precision choice, shared by pretraining and fine-tuning."""

from __future__ import annotations

import logging
from typing import Optional

import torch

log = logging.getLogger(__name__)


def pick_device(device: Optional[str]) -> str:
    """The configured Composer device name, else "gpu" when CUDA is there, else "cpu"."""
    return device or ("gpu" if torch.cuda.is_available() else "cpu")


def pick_precision(precision: str, device: str) -> str:
    """bf16 autocast is a GPU setting: on CPU an amp_* recipe trains in fp32 instead of failing."""
    if device == "cpu" and precision.startswith("amp_"):
        log.warning("precision %s needs a GPU; training in fp32 on CPU", precision)
        return "fp32"
    return precision
