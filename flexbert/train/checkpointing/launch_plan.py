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
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from composer.core import Time, TimeUnit
from composer.utils import parse_uri

from flexbert.io.checkpoint_reader import load_checkpoint_state
from flexbert.config import ConfigError
from flexbert.train.recipe.schema import Recipe
from flexbert.train.checkpointing import manifest
from flexbert.train.checkpointing.provenance import check_fits, checkpoints_in, newest_loadable, repoint_latest

# What a run from before manifests wrote that restart may remove: checkpoints (files and
# sharded folders), latest links and the saver's temporary names, by their exact patterns.
LEGACY_RE = re.compile(r"^(ep\d+-ba\d+(-rank\d+\.pt)?|latest-rank\d+\.pt)(\.tmp-\d+)?$")

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


def planned_outputs(cfg) -> list[str]:
    """Names (relative to save_folder) this launch may create besides checkpoints."""
    from flexbert.train.callbacks.summary import PLOT_NAME

    names = [cfg.callbacks.metrics_jsonl, cfg.export.hf_folder, PLOT_NAME]
    if cfg.callbacks.publish.enabled:
        names.append(cfg.callbacks.publish.folder)
    if cfg.callbacks.downstream_eval.enabled:
        names.append(cfg.callbacks.downstream_eval.folder)
    if cfg.loggers.wandb.enabled and not cfg.loggers.wandb.dir:
        names.append("wandb")
    return [n for n in names if n]


def record_planned(cfg, folder: str) -> None:
    """Record the outputs this launch will create (those not already there: a folder the user
    keeps elsewhere in save_folder is never adopted)."""
    os.makedirs(folder, exist_ok=True)
    fresh = [n for n in planned_outputs(cfg)
             if (p := manifest.contained(folder, n)) is not None and not os.path.lexists(p)]
    manifest.record(folder, fresh)


def run_outputs(cfg, folder: str) -> list[Path]:
    """What the previous run wrote into save_folder (its manifest), never anything outside it.
    A run from before manifests: its checkpoints and latest links by their exact names only."""
    root = Path(folder)
    if not root.is_dir():
        return []
    names = manifest.read(folder)
    if names is None:
        names = [p.name for p in root.iterdir() if LEGACY_RE.match(p.name)]
    out = [p for n in names if (p := manifest.contained(folder, n)) is not None
           and os.path.lexists(p)]
    return sorted(set(out))


def restart(cfg, folder: str) -> None:
    items = run_outputs(cfg, folder)
    if not is_rank_zero():
        return
    if items:
        print(f"restart=true: removing the previous run in {folder}: "
              + ", ".join(os.path.relpath(p, os.path.realpath(folder)) for p in items), flush=True)
    for path in items:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    Path(folder, manifest.MANIFEST).unlink(missing_ok=True)


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
    if folder is not None and is_rank_zero():
        record_planned(cfg, folder)
    if folder is not None and not cfg.restart:
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
    from flexbert.io.hf import save_hf
    from flexbert.io.publish import checkpoint_model

    from flexbert.train.callbacks.nonfinite import check_finite

    model, _ = checkpoint_model(checkpoint, trust=recipe.cfg.trust_checkpoint)
    check_finite(model, str(out))
    from flexbert.train.recipe.data import export_tokenizer

    save_hf(model, out, export_tokenizer(recipe.cfg))
    print(f"Hugging Face model folder: {out} (from {checkpoint.name})", flush=True)


