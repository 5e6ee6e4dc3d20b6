"""Sweep planning: read a sweep file, expand its grid (or list) into runs with stable names and
folders, and validate every run through train.py's own loader before anything trains."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from flexbert.config import ConfigError

DONE_FILE = "sweep_done.json"
FINETUNE_DIR = "finetune"   # <run>/finetune/<task>/results.json
MODEL_DIR = "model"          # FlexBERT model dir written per run (flexbert.yaml + weights + tokenizer)
SWEEP_KEYS = ("name", "base", "overrides", "grid", "runs", "out", "launcher", "finetune")
MANAGED_KEYS = ("run_name", "save_folder", "autoresume")


class SweepError(ConfigError):
    """A sweep file or one of its combinations is wrong; nothing has run."""


@dataclass
class Run:
    index: int
    name: str                   # stable slug, also the folder name
    own: list[str]              # this run's own overrides (grid/list), k=v
    overrides: list[str]        # everything passed to train.py, sweep-managed keys last
    folder: Path

    @property
    def done_file(self) -> Path:
        return self.folder / DONE_FILE


@dataclass
class Sweep:
    name: str
    source: Path
    base: Path
    runs: list[Run]
    out: Path
    launcher: str = "inprocess"
    finetune: list[Any] = field(default_factory=list)   # FinetuneConfig per task


def format_value(value: Any) -> str:
    """A YAML value as OmegaConf's dotlist parser reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _as_overrides(value: Any, where: str) -> list[str]:
    """A mapping {key: value} or a list of "key=value" strings -> ["key=value", ...]."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={format_value(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return list(value)
    raise SweepError(f"{where}: expected a mapping of dotted keys to values or a list of "
                     f"'key=value' strings, got {value!r}")


def run_slug(own: Sequence[str]) -> str:
    """A stable folder/run name from a run's own overrides."""
    if not own:
        return "base"
    parts = []
    for item in own:
        key, _, value = item.partition("=")
        key = key.removeprefix("model.")
        parts.append(f"{key}-{value}")
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "-", "_".join(parts))
    slug = re.sub(r"-{2,}", "-", slug).strip("-") or "run"
    if len(slug) > 80:
        digest = hashlib.sha1("|".join(own).encode()).hexdigest()[:8]
        slug = f"{slug[:71]}-{digest}"
    return slug


def _combinations(spec: dict, source: Path) -> list[list[str]]:
    grid, runs = spec.get("grid"), spec.get("runs")
    if grid is not None and runs is not None:
        raise SweepError(f"{source}: give either grid or runs, not both")
    if grid is not None:
        if not isinstance(grid, dict) or not grid:
            raise SweepError(f"{source}: grid: expected a mapping of dotted keys to lists of values")
        axes = []
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise SweepError(f"{source}: grid.{key}: expected a non-empty list of values")
            axes.append([f"{key}={format_value(v)}" for v in values])
        return [list(combo) for combo in itertools.product(*axes)]
    if runs is not None:
        if not isinstance(runs, list) or not runs:
            raise SweepError(f"{source}: runs: expected a non-empty list of override sets")
        return [_as_overrides(r, f"{source}: runs[{i}]") for i, r in enumerate(runs)]
    return [[]]


def merge_overrides(*lists: Sequence[str]) -> list[str]:
    """key=value lists, later ones winning: one entry per key, at its first key's place, so a
    launch line never holds two values for a key (max_duration=300ba ... max_duration=60ba)."""
    merged: dict[str, str] = {}
    for item in (i for items in lists for i in items):
        merged[item.split("=", 1)[0]] = item
    return list(merged.values())


def load_sweep(path: str | Path, out: Optional[str] = None, extra: Sequence[str] = ()) -> Sweep:
    """Read a sweep file and validate every combination (recipe, overrides, fine-tuning stage)
    through the same loader train.py uses; raise SweepError naming the run and the key.
    `extra` (`key=value` from the command line) applies to every run, after the file's own."""
    from omegaconf import OmegaConf

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: sweep file not found")
    spec = OmegaConf.to_container(OmegaConf.load(source), resolve=True)
    if not isinstance(spec, dict):
        raise SweepError(f"{source}: expected a mapping at the top level")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{source}: {unknown[0]}: unknown sweep key; allowed keys: "
                         f"{', '.join(SWEEP_KEYS)}")
    if "base" not in spec:
        raise SweepError(f"{source}: base: required (the recipe every run starts from)")
    base = Path(spec["base"])
    if not base.is_absolute():
        base = Path(os.path.normpath(source.parent / base))
    name = str(spec.get("name") or source.stem)
    out_dir = Path(out or str(spec.get("out") or "runs/sweeps/{name}").replace("{name}", name))
    launcher = spec.get("launcher", "inprocess")
    if launcher not in ("inprocess", "subprocess"):
        raise SweepError(f"{source}: launcher: {launcher!r}; allowed: inprocess, subprocess")
    common = _as_overrides(spec.get("overrides"), f"{source}: overrides")
    _check_unmanaged(common, f"{source}: overrides")
    for item in extra:
        if "=" not in item:
            raise SweepError(f"command line: {item!r}: expected key=value (e.g. max_duration=20ba)")
    _check_unmanaged(extra, "command line")
    common = merge_overrides(common, extra)

    runs: list[Run] = []
    combos = _combinations(spec, source)
    for i, own in enumerate(combos):
        slug = run_slug(own)
        if any(r.name == slug for r in runs):
            raise SweepError(f"{source}: run {i + 1} ({', '.join(own)}) repeats run {slug!r}")
        folder = out_dir / slug
        overrides = merge_overrides(common, own, [f"run_name={slug}", f"save_folder={folder}",
                                                  "autoresume=true"])
        runs.append(Run(i, slug, own, overrides, folder))

    from flexbert.train.recipe.load import load_recipe

    from flexbert.io.hf import check_expressible

    for run in runs:
        label = ", ".join(run.own) or "base"
        where = f"sweep {source}: run {run.index + 1}/{len(runs)} [{label}] (folder {run.name})"
        try:
            recipe = load_recipe(base, run.overrides)
        except (ConfigError, ValueError) as err:
            raise SweepError(f"{where}: {err}") from None
        if recipe.cfg.export.hf_folder:  # train.py would train, then fail to export
            try:
                check_expressible(recipe.model)
            except ValueError as err:
                raise SweepError(f"{where}: export.hf_folder: {err}; set export.hf_folder: null "
                                 "in the sweep's overrides (the sweep exports a FlexBERT model "
                                 "dir itself)") from None
    finetune = _finetune_stage(spec.get("finetune"), source)
    return Sweep(name, source, base, runs, out_dir, launcher, finetune)


def _check_unmanaged(overrides: Sequence[str], where: str) -> None:
    for item in overrides:
        if item.partition("=")[0] in MANAGED_KEYS:
            raise SweepError(f"{where}: {item.partition('=')[0]} is set by the sweep per run")


def _finetune_stage(value: Any, source: Path) -> list[Any]:
    if value is None:
        return []
    from flexbert.config import structured
    from flexbert.finetune import FinetuneConfig

    tasks = value if isinstance(value, list) else [value]
    configs = []
    for i, task in enumerate(tasks):
        where = f"finetune[{i}]" if isinstance(value, list) else "finetune"
        if not isinstance(task, dict) or not task.get("task"):
            raise SweepError(f"{source}: {where}.task: required")
        if "model" in task or "save_folder" in task:
            raise SweepError(f"{source}: {where}: model and save_folder are set per run by the sweep")
        from omegaconf import OmegaConf

        try:
            configs.append(OmegaConf.to_object(structured(FinetuneConfig, task, str(source), where)))
        except ConfigError as err:
            raise SweepError(str(err)) from None
    return configs
