"""`python train.py CONFIG [key=value ...]` and `composer -n N train.py ...` land here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from flexbert.config import ConfigError

log = logging.getLogger("flexbert.train")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from flexbert.train.recipe_help import keys_help

    parser = argparse.ArgumentParser(
        prog="train.py", description="Pretrain a FlexBERT encoder with Composer.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Overrides use dotted keys: max_duration=200ba optimizer.lr=1e-3 "
               "model.num_layers=2\n\n" + keys_help())
    parser.add_argument("config", help="recipe YAML, e.g. configs/tiny.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value")
    return parser.parse_args(argv)


def export_hf(recipe, trainer) -> Optional[Path]:
    """Rank 0 writes the trained model as a Hugging Face ModernBERT folder (+ tokenizer)."""
    from composer.utils import dist

    from flexbert.hf import save_hf
    from flexbert.train.builder import local_save_folder

    cfg = recipe.cfg
    if not cfg.export.hf_folder or dist.get_global_rank() != 0:
        return None
    if trainer.state.fsdp_enabled:
        log.warning("FSDP shards the weights: export the final checkpoint instead of %s",
                    cfg.export.hf_folder)
        return None
    out = Path(cfg.export.hf_folder)
    if not out.is_absolute():
        out = Path(local_save_folder(cfg.save_folder or ".")) / out
    tokenizer = _tokenizer(cfg.export.tokenizer or os.path.join(cfg.data_dir, "tokenizer"))
    wrapped = trainer.state.model  # DistributedDataParallel around the ComposerModel under DDP
    save_hf(getattr(wrapped, "module", wrapped).model, out, tokenizer)
    log.info("wrote Hugging Face model folder %s", out)
    return out


def _tokenizer(path: str):
    if not os.path.isdir(path):
        log.warning("no tokenizer at %s; the HF folder has weights and config only", path)
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    # Our own messages at INFO; the libraries' (Composer's seed and setup chatter) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("flexbert").setLevel(logging.INFO)
    from flexbert.train.config import load_recipe

    try:
        recipe = load_recipe(args.config, args.overrides)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from flexbert.train.builder import build_trainer

    trainer = build_trainer(recipe)
    trainer.fit()
    hf_folder = export_hf(recipe, trainer)
    from flexbert.train.summary import finish

    finish(recipe, trainer, hf_folder)
    trainer.close()
    return 0
