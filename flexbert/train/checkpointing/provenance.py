"""Which checkpoint a run starts from, and whether it was made from what the recipe says.

Composer unpickles `load_path` and the autoresume checkpoint itself; they are read here first
with `flexbert.io.checkpoint_reader` (safely), so an unsafe, truncated or empty file is refused by
name. Every checkpoint records what it was made from (`made_from`: data streams with their index
hashes, the tokenizer's hash, the rank count; the model config is PhaseInfo's `model_config`);
continuing a run (autoresume, `load_path`) with something else is refused, listing the keys.
A new phase (`reset_time`) may change positions, dropout and data on purpose; `init_from` starts
from weights only and is not compared. The rank count is recorded, never refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from flexbert.io.checkpoint_reader import (UnreadableCheckpoint, UnsafeCheckpoint, checkpoint_info,
                                        is_sharded, load_checkpoint_state, model_state)
from flexbert.config import ConfigError, to_yaml

log = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"^ep(\d+)-ba(\d+)-rank0\.pt$")
SHARDED_RE = re.compile(r"^ep(\d+)-ba(\d+)$")  # Composer's folder name under sharded saving
LATEST = "latest-rank0.pt"

# Model keys that change how a step is computed, not what the weights mean.
COMPUTE_ONLY = ("attention.kernel", "padding", "sparse_prediction", "classifier.", "init.")
# What a new phase (reset_time) may change on purpose: RoPE, the position range, dropout.
NEW_PHASE_MAY_CHANGE = ("position.", "max_position_embeddings", "attention.dropout",
                        "mlp.dropout", "embeddings.dropout")


class ResumeMismatch(ConfigError):
    """The checkpoint was made from another model, data or tokenizer than the recipe's."""


# --- what a run is made from ------------------------------------------------------------------------

def _sha(path: Path) -> Optional[str]:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def tokenizer_hash(folder: Optional[str]) -> Optional[str]:
    """The vocabulary and special tokens of a tokenizer.json (not its formatting)."""
    path = Path(folder or "") / "tokenizer.json"
    if not folder or not path.is_file():
        return None
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _sha(path)
    core = {"model": tree.get("model"), "added_tokens": tree.get("added_tokens")}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def tokenizer_folder(recipe: Any) -> Optional[str]:
    data = recipe.data
    if getattr(data, "tokenizer", None):
        return data.tokenizer
    first = next(iter(data.streams.values()), None)
    return os.path.join(first.local, "tokenizer") if first is not None and first.local else None


def data_fingerprint(data: Any) -> dict:
    """Per stream: where it is read from, its mixing weights and each split's index.json hash."""
    from flexbert.data.streams import stream_split

    streams = {}
    for name, s in data.streams.items():
        entry = {"remote": s.remote, "proportion": s.proportion, "repeat": s.repeat,
                 "choose": s.choose}
        for split in ("train", "val"):
            local = Path(s.local or "") / stream_split(s.split, split) / "index.json"
            entry[f"{split}_index"] = _sha(local) if s.local else None
        streams[name] = entry
    return {"max_seq_len": data.max_seq_len, "streams": streams}


def made_from(recipe: Any) -> dict:
    from flexbert.train.recipe.data import world_size

    return {"data": data_fingerprint(recipe.data),
            "tokenizer_sha256": tokenizer_hash(tokenizer_folder(recipe)),
            "world_size": world_size()}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def differences(info: dict, recipe: Any, new_phase: bool) -> list[str]:
    """'key: checkpoint X, recipe Y' for each difference that matters to this kind of load.
    Checkpoints written before a field was recorded are not compared on it."""
    diffs = []
    if info.get("model_config"):
        old = _flat(OmegaConf.to_container(OmegaConf.create(info["model_config"])))
        new = _flat(OmegaConf.to_container(OmegaConf.create(to_yaml(recipe.model))))
        allowed = COMPUTE_ONLY + (NEW_PHASE_MAY_CHANGE if new_phase else ())
        diffs += [f"model.{k}: checkpoint {old.get(k)!r}, recipe {new.get(k)!r}"
                  for k in sorted(old.keys() | new.keys())
                  if old.get(k) != new.get(k) and not k.startswith(allowed)]
    recorded = info.get("made_from") or {}
    current = made_from(recipe)
    keys = ["tokenizer_sha256"] + ([] if new_phase else ["data"])
    for key in keys:
        if recorded.get(key) is None:
            continue
        old, new = _flat(recorded[key], f"{key}."), _flat(current[key], f"{key}.")
        diffs += [f"{k}: checkpoint {old.get(k)!r}, recipe {new.get(k)!r}"
                  for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    return diffs


def check_fits(path: str, state: dict, recipe: Any, key: str, new_phase: bool) -> None:
    """Refuse a checkpoint without weights, or one made from something else (listing the keys)."""
    if not any("inv_freq" not in k for k in model_state(state)):
        raise UnreadableCheckpoint(f"{path}: {key}: the checkpoint holds no model weights "
                                   "(state.model is empty)")
    diffs = differences(checkpoint_info(state, path), recipe, new_phase)
    if diffs:
        how = ("start a new phase with reset_time=true, or start from its weights with "
               "model.init_from" if not new_phase else "start from its weights with model.init_from")
        raise ResumeMismatch(f"{path}: {key}: the checkpoint was made from other settings: "
                             f"{'; '.join(diffs)} (to change them on purpose, {how})")


# --- the checkpoints in save_folder --------------------------------------------------------------

def checkpoints_in(folder: str) -> list[Path]:
    """Rank 0's checkpoints in `folder` (monolithic files and sharded folders), newest (highest
    batch) first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = [(int(m.group(2)), p) for p in root.iterdir() if not p.is_symlink() and (
        ((m := CHECKPOINT_RE.match(p.name)) and p.is_file())
        or ((m := SHARDED_RE.match(p.name)) and is_sharded(p)))]
    return [p for _, p in sorted(found, key=lambda t: (t[0], t[1].stat().st_mtime), reverse=True)]


def newest_loadable(folder: str, trust: bool) -> tuple[Optional[Path], dict, list[str]]:
    """(the newest checkpoint that loads, its state, 'file: why' for each newer one skipped).
    `latest-rank0.pt` is only a pointer: the files themselves decide. What it points at is
    still what Composer's autoresume would open, so an unsafe target is refused here."""
    skipped = []
    latest = Path(folder) / LATEST
    if os.path.islink(latest) and not latest.exists():
        skipped.append(f"{LATEST}: dangling link to {os.readlink(latest)}")
    found = checkpoints_in(folder)
    if latest.exists() and os.path.realpath(latest) not in {os.path.realpath(p) for p in found}:
        check_pointer(latest, trust)  # the scan below reads (or repoints away from) the others
    for path in found:
        try:
            return path, load_checkpoint_state(path, trust), skipped
        except UnsafeCheckpoint:
            raise
        except UnreadableCheckpoint as err:
            skipped.append(f"{path.name}: {str(err).split(': ', 1)[-1]}")
    return None, {}, skipped


def check_pointer(latest: Path, trust: bool) -> None:
    """Read what `latest-rank0.pt` names with the safe reader: UnsafeCheckpoint propagates,
    an unreadable target is left for the newest-first scan to skip."""
    try:
        load_checkpoint_state(os.path.realpath(latest), trust)
    except UnreadableCheckpoint:
        pass


def repoint_latest(folder: str, chosen: Path) -> None:
    """Make `latest-rank0.pt` name `chosen` (rank 0 only), so Composer's autoresume loads it."""
    from flexbert.train.checkpointing.saver import point_symlink

    latest = Path(folder) / LATEST
    if os.path.realpath(latest) != os.path.realpath(chosen) and os.environ.get("RANK", "0") == "0":
        point_symlink(str(latest), str(chosen))
