"""Recipe loading: one YAML file + `key=value` overrides -> typed, validated trees, before
anything is built; every error names the file and the key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from flexbert.config import ConfigError, load_yaml, structured
from flexbert.model import model_config, resolve_model_tree
from flexbert.train.recipe.schema import CallbacksConfig, Recipe, RecipeConfig


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, override (`key=value`), type-check and validate a recipe; raise ConfigError naming
    the offending key before anything is built."""
    path = Path(path)
    raw = load_yaml(path, overrides)
    _load_plugins(raw, str(path))
    _collect_registered_callbacks(raw, str(path))
    merged = structured(RecipeConfig, raw, str(path))
    _require_set(merged, str(path))
    has_preset = merged.model is not None and merged.model.get("preset") is not None
    from flexbert.train.recipe.preflight import check_positions, check_values

    # Plain values first: the data adapter below divides the global batch by the rank count.
    check_values(OmegaConf.to_object(merged), str(path))
    model_tree = resolve_model_tree(merged.model, path)
    init_from = model_tree.pop("init_from", None)
    if init_from and has_preset:  # a typo in a local path: one line now, not a Hub download later
        from flexbert.io.checkpoint_reader import source_kind

        try:
            source_kind(init_from)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    if init_from and not has_preset:  # the architecture comes from the source, the recipe overrides
        from flexbert.train.checkpointing.init_from import source_model_config

        model = source_model_config(init_from, model_tree, str(path),
                                    trust=bool(merged.trust_checkpoint))
    else:
        model = model_config(model_tree, str(path), "model")
    data = _data_config(merged, str(path))
    cfg: RecipeConfig = OmegaConf.to_object(merged)
    cfg.model, cfg.data = OmegaConf.to_container(model_tree), data
    cfg.phase = cfg.phase or cfg.run_name
    if cfg.save_folder:  # "{run_name}" as Composer formats it; every path below uses this one
        cfg.save_folder = cfg.save_folder.replace("{run_name}", cfg.run_name)
    _validate(cfg, str(path))
    from flexbert.model.attention.kernels import precision_problem

    problem = precision_problem(model.attention.kernel, cfg.trainer.precision)
    if problem:
        raise ConfigError(f"{path}: trainer.precision: {problem}")
    if init_from and cfg.load_path:
        raise ConfigError(f"{path}: model.init_from: cannot be combined with load_path (init_from "
                          "starts from weights with a fresh optimizer; load_path continues a run)")
    recipe = Recipe(cfg=cfg, model=model, data=data, source=str(path), init_from=init_from)
    check_positions(recipe)
    return recipe


def _load_plugins(raw: DictConfig, source: str) -> None:
    """Import the recipe's `plugins:` (and installed entry-point plugins) before anything else
    reads a component name."""
    from flexbert.plugins import load_entry_point_plugins, load_plugins

    plugins = raw.get("plugins") or []
    if isinstance(plugins, str) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{source}: plugins: expected a list of module names, got {plugins!r}")
    load_entry_point_plugins()
    load_plugins(list(plugins), source)


def _collect_registered_callbacks(raw: DictConfig, source: str) -> None:
    """Move `callbacks.NAME` entries that name a registered callback into
    `callbacks.registered`; any other unknown key fails with both lists."""
    import dataclasses

    from flexbert.train.registries import CALLBACKS

    callbacks = raw.get("callbacks")
    if not isinstance(callbacks, DictConfig):
        return
    fields = [f.name for f in dataclasses.fields(CallbacksConfig)]
    for name in [k for k in callbacks if k not in fields]:
        if name not in CALLBACKS:
            raise ConfigError(f"{source}: callbacks.{name}: unknown key; allowed keys: "
                              f"{', '.join(fields)}; registered callbacks: "
                              f"{', '.join(CALLBACKS.names())}")
        with open_dict(callbacks):
            if callbacks.get("registered") is None:
                callbacks.registered = {}
            callbacks.registered[name] = callbacks.pop(name)


def _require_set(merged: DictConfig, source: str) -> None:
    for key in ("data_dir", "run_name", "max_duration"):
        if OmegaConf.is_missing(merged, key):
            raise ConfigError(f"{source}: {key}: required (set it in the YAML or as {key}=...)")


def _data_config(merged: DictConfig, source: str) -> Any:
    """The data tree typed by the data package's schema, with data_dir filled in."""
    from flexbert.train.recipe.data import data_config

    return data_config(merged.data, merged.data_dir, OmegaConf.to_object(merged.batch), source)


def _validate(cfg: RecipeConfig, source: str) -> None:
    from composer.core import Time

    from flexbert.train.optim import OPTIMIZERS
    from flexbert.train.schedules import SCHEDULERS

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{source}: {key}: {message}")

    if cfg.optimizer.name not in OPTIMIZERS:
        fail("optimizer.name", f"unknown optimizer {cfg.optimizer.name!r}; allowed: "
             f"{', '.join(OPTIMIZERS.names())}")
    name = cfg.scheduler.get("name")
    if name not in SCHEDULERS:
        fail("scheduler.name", f"unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS.names())}")
    try:
        from flexbert.train.schedules import build_scheduler

        build_scheduler(cfg.scheduler)
    except ValueError as err:
        fail("scheduler", str(err))
    if cfg.callbacks.publish.enabled and (
            not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", cfg.phase) or ".." in cfg.phase):
        fail("phase", f"{cfg.phase!r} is not a safe name (letters, digits, '.', '_', '-'; it "
             "names published folders and Hub branches)")
    if cfg.autoresume and not cfg.save_folder:
        fail("autoresume", "needs save_folder (where the checkpoints to resume from live)")
    publish = cfg.callbacks.publish
    if publish.enabled and publish.every:
        try:
            Time.from_timestring(str(publish.every))
        except ValueError:
            fail("callbacks.publish.every", f"{publish.every!r} is not a time string such as "
                 "'1000000tok' or '100ba'")
    if publish.enabled and not cfg.save_folder:
        fail("callbacks.publish.enabled", "needs save_folder (published folders go under it)")
    _validate_trainer(cfg, fail)
    from flexbert.train.callbacks.downstream_eval import check_downstream_config

    check_downstream_config(cfg, source)
    _validate_extensions(cfg, source)
    if cfg.loggers.wandb.mode not in ("online", "offline", "disabled"):
        fail("loggers.wandb.mode", f"{cfg.loggers.wandb.mode!r}; allowed: online, offline, disabled")


def _validate_trainer(cfg: RecipeConfig, fail) -> None:
    if cfg.trainer.eval_subset_num_batches < 1:
        fail("trainer.eval_subset_num_batches", f"{cfg.trainer.eval_subset_num_batches}: give a "
             "number of batches per evaluation (>= 1); the packed eval stream has no end, so "
             "-1 (all) cannot apply")
    from flexbert.train.distributed.fsdp import validate_fsdp

    every = cfg.trainer.activation_checkpointing
    if every < 0:
        fail("trainer.activation_checkpointing", "0 (off), 1 (every encoder layer) or n (every "
             f"n-th layer), got {every}")
    if cfg.trainer.fsdp is not None:
        validate_fsdp(cfg.trainer, cfg.optimizer.name, fail)


def _validate_extensions(cfg: RecipeConfig, source: str) -> None:
    """Build the registered callbacks and algorithms once, so a wrong name or argument fails
    here, naming its key, rather than after the model is built."""
    from flexbert.train.registries import ALGORITHMS, CALLBACKS, build_all

    try:
        build_all(CALLBACKS, cfg.callbacks.registered, "callbacks", source)
        build_all(ALGORITHMS, cfg.algorithms, "algorithms", source)
    except ValueError as err:
        raise ConfigError(str(err)) from None
