"""Small builders shared by the model tests (tiny dims so the CPU suite stays fast)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from flexbert.config import ModelConfig
from flexbert.model import model_config

TINY: dict[str, Any] = dict(
    vocab_size=128, hidden_size=32, num_layers=3, max_position_embeddings=256,
    pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
    mask_token_id=3, sparse_prediction=False,
    attention=dict(num_heads=4, global_every_n_layers=2, local_window=6, kernel="sdpa"),
    position=dict(global_theta=160000.0, local_theta=10000.0),
    mlp=dict(intermediate_size=48),
)


def tiny_config(**overrides: Any) -> ModelConfig:
    """TINY with dotted-key overrides, e.g. tiny_config(**{"attention.kernel": "flex"})."""
    cfg = OmegaConf.create(TINY)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return model_config(cfg, source="test")


def mixed_batch(lengths: list[int], vocab: int = 128, seed: int = 0):
    """Right-padded input_ids and attention_mask with the given real lengths."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(4, vocab, (len(lengths), width), generator=gen)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


def copy_model(cls, src: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    model = cls(cfg)
    model.load_state_dict(src.state_dict())
    return model


class Evil:
    """A pickle payload that only touches a marker file: the trust tests' hostile object."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


TINY_RECIPE = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def short_run(corpus: Path, folder: Path, *extra: str) -> list[str]:
    """train.py arguments for a 8-row fp32 tiny run that saves every 2 steps (extra ones win)."""
    return [TINY_RECIPE, f"data_dir={corpus}", f"save_folder={folder}", "run_name=t",
            "batch.global_train_batch_size=8", "batch.global_eval_batch_size=8",
            "batch.warmup_start=null", "trainer.device_train_microbatch_size=8",
            "eval_interval=1000ba", "trainer.eval_subset_num_batches=1", "trainer.precision=fp32",
            "trainer.progress_bar=false", "save_interval=2ba", *extra]
