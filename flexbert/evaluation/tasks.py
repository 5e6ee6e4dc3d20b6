"""`--tasks` entries -> evaluation tasks: a GLUE name, the `glue` suite, or local task files
(a folder, `TRAIN,EVAL` files), optionally named `NAME=PATH`; each with its grid of settings."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from flexbert.config import ConfigError
from flexbert.finetune.config import FinetuneConfig, task_name
from flexbert.finetune.tasks import GLUE_TASKS
from flexbert.finetune.data import task_kind

# The metric each kind is plotted and ranked by.
MAIN_BY_KIND = {"classification": "accuracy", "regression": "spearman",
                "token_classification": "entity_f1", "retrieval": "ndcg@10"}


@dataclass
class EvalTask:
    name: str
    task: str                                  # FinetuneConfig.task
    kind: str
    grid: list[dict] = field(default_factory=lambda: [{}])   # settings tried; [{}]: the defaults
    seeds: Sequence[int] = ()                  # empty: the run's seeds
    main_metric: str = "accuracy"


def parse_tasks(entries: Sequence[str]) -> list[EvalTask]:
    from flexbert.evaluation.glue import GLUE_SEEDS, GLUE_SUITE, MAIN_METRIC, glue_grid

    tasks: list[EvalTask] = []
    for entry in [e.strip() for item in entries for e in item.split(";") if e.strip()]:
        name, sep, target = entry.partition("=")
        if not sep:
            name, target = "", entry
        if target.lower() == "glue":
            tasks += [EvalTask(t, t, "classification", glue_grid(t), GLUE_SEEDS, MAIN_METRIC[t])
                      for t in GLUE_SUITE]
            continue
        if target.lower() in GLUE_TASKS:
            t = target.lower()
            tasks.append(EvalTask(name or t, t, "classification", [{}], (), MAIN_METRIC.get(t, "accuracy")))
            continue
        if not Path(target.split(",")[0]).exists():
            raise ConfigError(f"--tasks {entry!r}: {target.split(',')[0]} does not exist (a task "
                              "folder, TRAIN,EVAL files, a GLUE name, or glue)")
        cfg = FinetuneConfig(task=target, name=name or None)
        kind = task_kind(cfg)
        tasks.append(EvalTask(task_name(cfg), target, kind, [{}], (), MAIN_BY_KIND[kind]))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"--tasks: two tasks share a name ({names}); name them NAME=PATH")
    return tasks


def run_config(task: EvalTask, settings: dict, seed: int, model: str, base: FinetuneConfig,
               ) -> FinetuneConfig:
    """The FinetuneConfig of one (task, grid point, seed) on one model folder."""
    return replace(base, model=model, task=task.task, name=task.name, seed=seed, **settings)


def settings_key(settings: dict[str, Any]) -> str:
    return ",".join(f"{k}={settings[k]}" for k in sorted(settings)) or "default"
