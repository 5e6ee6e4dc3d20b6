"""Model loading for fine-tuning: any model source -> (ModelConfig, weights), the tokenizer that
goes with it, and a task model whose new head is seeded independently of how the encoder was
read. `load_encoder` is the one place fine-tuning opens a model source."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch

from flexbert.config import ModelConfig


def load_encoder(source: str, model_config_path: Optional[str] = None,
                 trust: bool = False) -> tuple[ModelConfig, dict]:
    """(ModelConfig, state dict in FlexBertForMaskedLM names) from any source the checkpoint
    reader takes (FlexBERT model directory, Hugging Face folder, Composer `.pt`, sharded folder),
    or a run folder holding latest-rank0.pt. A Composer checkpoint's config is
    `model_config_path`, its PhaseInfo, or a flexbert.yaml beside it."""
    from flexbert.io.checkpoint_reader import read_source

    p = Path(source)
    if p.is_dir() and (p / "latest-rank0.pt").exists():
        p = p / "latest-rank0.pt"
    read = read_source(str(p), trust, key="--model")
    if read.kind in ("composer", "sharded") and (model_config_path or read.config is None):
        return composer_model_config(p, model_config_path, read.info), read.weights
    return read.config, read.weights


# The name the sweep and the first tests know this function by.
read_pretrained = load_encoder


def composer_model_config(checkpoint: Path, config_path: Optional[str], info: dict) -> ModelConfig:
    """`--model-config` (a recipe, a model preset or a flexbert.yaml), else the checkpoint's
    PhaseInfo, else a flexbert.yaml beside the checkpoint or in its folder's model/."""
    from omegaconf import OmegaConf

    from flexbert.config import load_yaml
    from flexbert.model import model_config

    if not config_path and info.get("model_config"):
        return model_config(OmegaConf.create(info["model_config"]), f"{checkpoint}: PhaseInfo")
    candidates = [Path(config_path)] if config_path else [
        checkpoint.parent / "flexbert.yaml", checkpoint.parent / "model" / "flexbert.yaml"]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{checkpoint}: the checkpoint does not hold the model config; "
                                "pass --model-config RECIPE_OR_MODEL_YAML")
    raw = load_yaml(path)
    if "max_duration" in raw or "run_name" in raw:  # a training recipe
        from flexbert.model import recipe_model_config

        return recipe_model_config(path)
    return model_config(raw.model if "model" in raw else raw, str(path))


def load_tokenizer(model_path: str, tokenizer: Optional[str]):
    """--tokenizer, else the tokenizer in (or beside) the model folder."""
    from flexbert.io.checkpoint_reader import load_tokenizer_safely

    p = Path(model_path)
    base = p if p.is_dir() else p.parent
    candidates = [Path(tokenizer)] if tokenizer else [base, base / "tokenizer", base / "hf",
                                                      base / "model"]
    for c in candidates:
        if (c / "tokenizer.json").is_file() or (c / "tokenizer_config.json").is_file():
            return load_tokenizer_safely(c)
    if tokenizer:  # a hub name
        return load_tokenizer_safely(tokenizer)
    raise FileNotFoundError(f"{model_path}: no tokenizer beside the model; pass --tokenizer DIR")


def model_with_encoder(source: str, model_config_path: Optional[str], seed: int,
                       build: Callable[[Any], torch.nn.Module]) -> torch.nn.Module:
    """A task model (`build(config tree)`) with the encoder and the MLM head's dense/norm (as
    transformers does) from `source`. The RNG is reseeded after reading the source, so the new
    head's init depends on `seed` only, not on how much randomness loading consumed."""
    from omegaconf import OmegaConf

    model_cfg, state = load_encoder(source, model_config_path)
    torch.manual_seed(seed)
    model = build(OmegaConf.structured(model_cfg))
    head_prefixes = ("classifier.",)
    wanted = {k: v for k, v in state.items() if not k.startswith("decoder.") and "inv_freq" not in k}
    result = model.load_state_dict(wanted, strict=False)
    missing = [k for k in result.missing_keys
               if not k.startswith(head_prefixes) and "inv_freq" not in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"{source}: weights do not fit the task model; missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    return model
