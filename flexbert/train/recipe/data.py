"""Adapter from the recipe to flexbert.data: fills `data_dir` in as the stream, turns the
recipe's global batch sizes into per-rank ones, and wraps the loaders in Composer DataSpecs."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import OmegaConf

from flexbert.config import ConfigError


def world_size() -> int:
    """Processes in the run; the Composer launcher sets WORLD_SIZE before the script starts."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def per_rank(global_rows: int, key: str, source: str) -> int:
    world = world_size()
    if global_rows % world:
        lower, upper = global_rows // world * world, -(-global_rows // world) * world
        hint = f"{lower} or {upper}" if lower else f"{upper}"
        raise ConfigError(f"{source}: {key}: {global_rows} rows do not split evenly over {world} "
                          f"processes; set {key} to a multiple of {world} (e.g. {hint})")
    return global_rows // world


def data_config(tree: Any, data_dir: str, batch: Any, source: str) -> Any:
    """The data package's DataConfig for this recipe (typed: unknown keys fail naming them)."""
    from flexbert.config import structured
    from flexbert.data import DataConfig, validate_data_config

    node = OmegaConf.create({} if tree is None else tree)
    if not node.get("streams"):
        node.streams = {"main": {"local": data_dir}}
    for key in ("batch_warmup_min_rows", "batch_warmup_tokens"):
        if node.get(key) is not None:
            raise ConfigError(f"{source}: data.{key}: set the global batch.warmup_start / "
                              f"batch.warmup_tokens instead")
    cfg = OmegaConf.to_object(structured(DataConfig, node, source, "data"))
    device_rows = per_rank(batch.global_train_batch_size, "batch.global_train_batch_size", source)
    if batch.warmup_start is not None:
        cfg.batch_warmup_min_rows = max(1, per_rank(batch.warmup_start, "batch.warmup_start", source))
        cfg.batch_warmup_tokens = int(batch.warmup_tokens)
    try:
        return validate_data_config(cfg, "data", device_rows)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None


def _spec(recipe: Any, split: str, global_rows: int) -> Any:
    from flexbert.data import build_data_spec, build_pretraining_dataloader

    rows = per_rank(global_rows, "batch", recipe.source)
    loader = build_pretraining_dataloader(recipe.data, device_batch_size=rows, split=split)
    return build_data_spec(loader)


def train_dataspec(recipe: Any) -> Any:
    return _spec(recipe, "train", recipe.cfg.batch.global_train_batch_size)


def eval_dataspec(recipe: Any) -> Any:
    batch = recipe.cfg.batch
    return _spec(recipe, "val", batch.global_eval_batch_size or batch.global_train_batch_size)


def packing_efficiency(batch: Any) -> float:
    from flexbert.data import packing_efficiency as efficiency

    return efficiency(batch)


def seq_len_and_mask_rate(data: Any) -> tuple[int, float]:
    return data.max_seq_len, data.mlm_probability


def export_tokenizer(cfg):
    """The tokenizer the HF export carries: export.tokenizer, else <data_dir>/tokenizer."""
    import logging

    path = cfg.export.tokenizer or os.path.join(cfg.data_dir, "tokenizer")
    if not os.path.isdir(path):
        logging.getLogger(__name__).warning("no tokenizer at %s; the HF folder has weights and "
                                            "config only", path)
        return None
    from flexbert.io.checkpoint_reader import load_tokenizer_safely

    return load_tokenizer_safely(path)
