"""What a launch does with what `save_folder` already holds, decided before anything is built.

- empty folder: train.
- `restart=true`: say what goes, remove the old run (checkpoints, metrics, exports), train.
- a finished run with the same settings: report it (exit 0) and write the HF export if missing.
- an unfinished or extended run: `autoresume=true` continues from the newest checkpoint that
  loads (a missing, dangling or truncated `latest-rank0.pt` is skipped, saying so); without it,
  one line names the key to set.
- a run made from other settings, or trained past `max_duration`: one line, exit 2.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from composer.core import Time, TimeUnit
from composer.utils import parse_uri

from flexbert.checkpoint_reader import load_checkpoint_state
from flexbert.config import ConfigError
from flexbert.train.config import Recipe
from flexbert.train.resume import check_fits, checkpoints_in, newest_loadable, repoint_latest

# A timestamp field per max_duration unit; batches and epochs end exactly, samples and tokens
# overshoot on the last step.
UNIT_FIELD = {TimeUnit.BATCH: "batch", TimeUnit.EPOCH: "epoch", TimeUnit.SAMPLE: "sample",
              TimeUnit.TOKEN: "token"}


@dataclass
class Plan:
    finished: Optional[Path] = None     # the last checkpoint of a run that is already done
    resume_from: Optional[Path] = None  # the checkpoint autoresume continues from


def is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _local_folder(cfg) -> Optional[str]:
    if not cfg.save_folder or parse_uri(cfg.save_folder)[0]:
        return None  # object-store folders: Composer's autoresume handles them
    return cfg.save_folder


def check_load_path(recipe: Recipe) -> None:
    cfg = recipe.cfg
    if cfg.load_path and not parse_uri(cfg.load_path)[0]:
        state = load_checkpoint_state(cfg.load_path, cfg.trust_checkpoint)
        check_fits(cfg.load_path, state, recipe, "load_path",
                   new_phase=cfg.reset_time or cfg.load_weights_only)


def run_outputs(cfg, folder: str) -> list[Path]:
    """Everything a run writes into save_folder that a restart must clear."""
    root = Path(folder)
    if not root.is_dir():
        return []
    names = [cfg.callbacks.metrics_jsonl, cfg.export.hf_folder, cfg.callbacks.publish.folder]
    out = [root / n for n in names if n and not os.path.isabs(n) and os.path.lexists(root / n)]
    out += [p for p in root.iterdir() if p.name.startswith(("ep", "latest-rank")) and
            (p.suffix == ".pt" or p.is_dir() or ".tmp-" in p.name)]
    return sorted(set(out))


def restart(cfg, folder: str) -> None:
    items = run_outputs(cfg, folder)
    if not items or not is_rank_zero():
        return
    print(f"restart=true: removing the previous run in {folder}: "
          + ", ".join(p.name for p in items), flush=True)
    for path in items:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def progress(state: dict, max_duration: str) -> tuple[int, int, str]:
    """(done, wanted, unit name) of the checkpoint against max_duration (wanted < 0: unknown)."""
    limit = Time.from_timestring(str(max_duration))
    name = UNIT_FIELD.get(limit.unit)
    stamp = (state.get("timestamp") or {}).get("Timestamp") or {}
    if name is None or name not in stamp:
        return int(stamp.get("batch", 0)), -1, "ba"
    return int(stamp[name]), int(limit.value), name


def plan_run(recipe: Recipe) -> Plan:
    cfg = recipe.cfg
    folder = _local_folder(cfg)
    if folder is not None and cfg.restart:
        restart(cfg, folder)
    elif folder is not None:
        plan = _plan_existing(recipe, folder)
        if plan is not None:
            return plan  # the run's own checkpoints decide; Composer then ignores load_path
    check_load_path(recipe)
    return Plan()


def free_folder(folder: str) -> str:
    """A sibling of `folder` that does not exist yet: the save_folder= a message can offer, so
    that a second run never has to delete the first to start."""
    n = 2
    while os.path.exists(f"{folder.rstrip('/')}-{n}"):
        n += 1
    return f"{folder.rstrip('/')}-{n}"


def _plan_existing(recipe: Recipe, folder: str) -> Optional[Plan]:
    cfg = recipe.cfg
    other = f"save_folder={free_folder(folder)} to keep it and train a separate run"
    chosen, state, skipped = newest_loadable(folder, cfg.trust_checkpoint)
    if chosen is None:
        if skipped:
            raise ConfigError(f"{folder}: save_folder holds checkpoints but none loads "
                              f"({'; '.join(skipped)}); set restart=true to start over, or {other}")
        return None
    try:
        check_fits(str(chosen), state, recipe, "autoresume" if cfg.autoresume else "save_folder",
                   new_phase=False)
    except ConfigError as err:
        if cfg.autoresume:
            raise
        raise type(err)(f"{err}; or set {other}") from None
    if skipped and is_rank_zero():
        print(f"autoresume: skipped {'; '.join(skipped)}; using {chosen.name}", flush=True)
    done, wanted, unit = progress(state, cfg.max_duration)
    if wanted >= 0 and done > wanted and unit in ("batch", "epoch"):
        raise ConfigError(f"{folder}: save_folder holds a run trained to {unit} {done}, past "
                          f"max_duration={cfg.max_duration}; set restart=true to train again "
                          f"from the start (deletes it), or {other}")
    if wanted >= 0 and done >= wanted:
        return Plan(finished=chosen)
    if not cfg.autoresume:
        raise ConfigError(f"{folder}: save_folder holds an unfinished run ({unit} {done} of "
                          f"max_duration={cfg.max_duration}); set autoresume=true to continue "
                          f"it, restart=true to start over (deletes it), or {other}")
    repoint_latest(folder, chosen)
    return Plan(resume_from=chosen)


def finish(recipe: Recipe, checkpoint: Path) -> Optional[Path]:
    """A finished run relaunched: say so, and write the HF export from its last checkpoint if
    it is missing (a kill after the last checkpoint leaves none)."""
    cfg = recipe.cfg
    out = None
    if cfg.export.hf_folder and is_rank_zero():
        out = Path(cfg.export.hf_folder)
        if not out.is_absolute():
            out = Path(_local_folder(cfg) or ".") / out
        if not (out / "model.safetensors").is_file():
            export_checkpoint(recipe, checkpoint, out)
    if is_rank_zero():
        print(f"{cfg.run_name}: already finished ({checkpoint.name} reached max_duration="
              f"{cfg.max_duration}); checkpoints and metrics in {checkpoint.parent}"
              + (f", Hugging Face folder {out}" if out else "")
              + ". To train again from the start set restart=true (deletes it) or "
              f"save_folder={free_folder(str(checkpoint.parent))} (keeps it); to train longer "
              "raise max_duration with autoresume=true.", flush=True)
    return out


def last_good(recipe: Recipe) -> str:
    """Where a stopped run can be picked up from, for its final message."""
    folder = _local_folder(recipe.cfg)
    found = checkpoints_in(folder) if folder else []
    if not found:
        return "no checkpoint was written before it"
    return (f"the last good checkpoint is {found[0]} ({folder}/latest-rank0.pt); lower "
            "optimizer.lr (or clip with trainer.grad_clip_norm) and relaunch with autoresume=true")


def export_checkpoint(recipe: Recipe, checkpoint: Path, out: Path) -> None:
    from flexbert.hf import save_hf
    from flexbert.train.publish import checkpoint_model

    from flexbert.train.guard import check_finite

    model, _ = checkpoint_model(checkpoint, trust=recipe.cfg.trust_checkpoint)
    check_finite(model, str(out))
    save_hf(model, out, export_tokenizer(recipe.cfg))
    print(f"Hugging Face model folder: {out} (from {checkpoint.name})", flush=True)


def export_tokenizer(cfg):
    """The tokenizer the HF export carries: export.tokenizer, else <data_dir>/tokenizer."""
    import logging

    path = cfg.export.tokenizer or os.path.join(cfg.data_dir, "tokenizer")
    if not os.path.isdir(path):
        logging.getLogger(__name__).warning("no tokenizer at %s; the HF folder has weights and "
                                            "config only", path)
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
