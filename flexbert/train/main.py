"""`python train.py CONFIG [key=value ...]` and `composer -n N train.py ...` land here."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from flexbert.config import ConfigError

log = logging.getLogger("flexbert.train")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from flexbert.train.recipe.help import keys_help

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
    from flexbert.io.hf import save_hf
    from flexbert.train.checkpointing.saver import local_save_folder
    from flexbert.runtime.distributed import export_model
    from flexbert.train.callbacks.nonfinite import check_finite
    from flexbert.train.recipe.data import export_tokenizer

    cfg = recipe.cfg
    if not cfg.export.hf_folder:
        return None
    model = export_model(trainer.state)  # under FSDP every rank helps gather; None off rank 0
    if model is None:
        return None
    out = Path(cfg.export.hf_folder)
    if not out.is_absolute():
        out = Path(local_save_folder(cfg.save_folder or ".")) / out
    tokenizer = export_tokenizer(cfg)
    check_finite(model, str(out))
    save_hf(model, out, tokenizer)
    log.info("wrote Hugging Face model folder %s", out)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    # Our own messages at INFO; the libraries' (Composer's seed and setup chatter) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("flexbert").setLevel(logging.INFO)
    from flexbert.train.recipe.load import load_recipe

    try:
        recipe = load_recipe(args.config, args.overrides)
        from flexbert.train.recipe.preflight import check_data

        check_data(recipe)  # data prepared, tokenizer vs model: before the model is built
        from flexbert.train.checkpointing.shm_cleanup import clean_stale_streaming_memory

        clean_stale_streaming_memory()  # what SIGKILLed runs left in /dev/shm
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return train(recipe)


def starting_point(recipe, plan) -> Optional[str]:
    """The line that says which checkpoint this launch starts from (a new phase's load_path, or
    the run's own checkpoint under autoresume); None for a run from scratch."""
    import os

    cfg = recipe.cfg
    if plan.resume_from is not None:
        return f"{cfg.run_name}: autoresume from {plan.resume_from}"
    if not cfg.load_path:
        return None
    real = os.path.realpath(cfg.load_path) if os.path.exists(cfg.load_path) else None
    shown = cfg.load_path + (f" (= {os.path.basename(real)})"
                             if real and os.path.basename(real) != os.path.basename(cfg.load_path)
                             else "")
    what = "weights" if cfg.load_weights_only else "weights, optimizer and schedule"
    clocks = "; step and token counts start at 0" if cfg.reset_time else ""
    return f"{cfg.run_name}: loading {what} from {shown}{clocks}"


def mark_run(recipe, plan) -> None:
    """Rank 0 writes the run's id into a local save_folder: a new one unless it resumes."""
    from composer.utils import parse_uri

    from flexbert.io.run_identity import start_run_id
    from flexbert.train.checkpointing.launch_plan import is_rank_zero

    folder = recipe.cfg.save_folder
    if folder and not parse_uri(folder)[0] and is_rank_zero():
        start_run_id(folder, fresh=plan.resume_from is None)


def train(recipe) -> int:
    """Plan against save_folder, train, export; every expected failure is one line + exit code."""
    from flexbert.io.checkpoint_reader import UnreadableCheckpoint, UnsafeCheckpoint
    from flexbert.data.documents import ShardError, shard_error_line
    from flexbert.train.builder import build_trainer
    from flexbert.train.callbacks.nonfinite import NonFiniteLoss
    from flexbert.train.checkpointing.launch_plan import finish, is_rank_zero, last_good, plan_run

    try:
        plan = plan_run(recipe)
        if plan.finished:
            finish(recipe, plan.finished)
            return 0
        mark_run(recipe, plan)
        line = starting_point(recipe, plan)
        if line and is_rank_zero():
            print(line, flush=True)
        trainer = build_trainer(recipe)
        trainer.fit()
    except (UnsafeCheckpoint, UnreadableCheckpoint, ConfigError) as err:
        if is_rank_zero():  # every rank finds the same; one line, not one per rank
            print(f"error: {err}", file=sys.stderr)
        return 2
    except FileExistsError as err:  # Composer's check, for object-store folders plan_run cannot list
        if "overwrite" not in str(err):
            raise
        if is_rank_zero():
            print(f"error: {recipe.cfg.save_folder}: save_folder holds checkpoints of an earlier "
                  "run; set autoresume=true to continue it, or choose another save_folder",
                  file=sys.stderr)
        return 2
    except ShardError as err:  # a bad shard met while training (maybe in a loader worker)
        if is_rank_zero():
            print(f"error: {shard_error_line(err)}", file=sys.stderr)
        return 2
    except NonFiniteLoss as err:
        if is_rank_zero():
            print(f"error: {err}: stopped before saving it; {last_good(recipe)}", file=sys.stderr)
        return 3
    hf_folder = export_hf(recipe, trainer)
    from flexbert.train.callbacks import summary

    summary.finish(recipe, trainer, hf_folder)
    trainer.close()
    return 0
