"""Fine-tune and evaluate every (source, task, setting, seed) once: finished runs are kept in
results.jsonl, one line each, and skipped when the command is run again."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from flexbert.evaluation.sources import Source, prepare, source_run_id
from flexbert.evaluation.tasks import EvalTask, run_config, settings_key
from flexbert.finetune.config import FinetuneConfig

log = logging.getLogger(__name__)
RESULTS_FILE = "results.jsonl"


def read_results(out: Path) -> list[dict]:
    """Finished runs; a line cut short by a crash is ignored (that run is simply redone)."""
    path = Path(out) / RESULTS_FILE
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping an unfinished line", path)
    return rows


def rounded(value):
    """4 significant digits for the console (results.jsonl keeps the full value)."""
    return f"{value:.4g}" if isinstance(value, float) else value


def key(row: dict) -> tuple:
    return (row["source"], row["task"], row["settings"], int(row["seed"]))


def drop_stale(out: Path, rows: list[dict]) -> list[dict]:
    """Drop results (and cached model folders) of checkpoints whose run folder now holds another
    run (restart=true reuses the folder and the checkpoint names); say which went. Rows without
    a run id (older results, model folders) stay."""
    import shutil

    def stale(row: dict) -> bool:
        now = source_run_id(Path(row.get("path", "")))
        return bool(row.get("run_id")) and now is not None and row["run_id"] != now

    gone = [r for r in rows if stale(r)]
    if not gone:
        return rows
    kept = [r for r in rows if not stale(r)]
    (out / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in kept))
    labels = sorted({r["source"] for r in gone})
    for label in labels:
        for folder in (out / "models" / label.replace("/", "__"), out / "runs" / label):
            shutil.rmtree(folder, ignore_errors=True)
    print(f"flexbert eval: dropped {len(gone)} results of an earlier run in the same folder "
          f"(restarted since): {', '.join(labels)}", flush=True)
    return kept


def plan(sources: Sequence[Source], tasks: Sequence[EvalTask], seeds: Sequence[int],
         done: set) -> dict[str, list[tuple[EvalTask, dict, int]]]:
    """source label -> the (task, settings, seed) runs not finished yet."""
    todo: dict[str, list] = {}
    for source in sources:
        for task in tasks:
            for settings in task.grid:
                for seed in (task.seeds or seeds):
                    if (source.label, task.name, settings_key(settings), int(seed)) not in done:
                        todo.setdefault(source.label, []).append((task, settings, int(seed)))
    return todo


def run_all(sources: Sequence[Source], tasks: Sequence[EvalTask], seeds: Sequence[int], out: Path,
            base: FinetuneConfig, tokenizer: Optional[str] = None,
            finetune: Optional[Callable[[FinetuneConfig], dict]] = None) -> dict[str, int]:
    """Run what is missing; returns {"ran": n, "skipped": n already finished}."""
    from flexbert.evaluation.glue import check_reachable

    if finetune is None:
        from flexbert.finetune import finetune
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = {key(r) for r in drop_stale(out, read_results(out))}
    todo = plan(sources, tasks, seeds, done)
    total = sum(len(t.grid) * len(t.seeds or seeds) for t in tasks) * len(sources)
    ran = sum(len(v) for v in todo.values())
    if ran:
        check_reachable([t.task for t in tasks])
    for source in sources:
        if source.label not in todo:
            continue
        folder, position = prepare(source, out / "models", tokenizer)
        for task, settings, seed in todo[source.label]:
            cfg = run_config(task, settings, seed, str(folder), base)
            where = out / "runs" / source.label / task.name / settings_key(settings) / f"seed{seed}"
            started = time.time()
            result = finetune(replace(cfg, save_folder=str(where)))
            row = {"source": source.label, "path": str(source.path),
                   "run_id": source_run_id(source.path), **position, "task": task.name,
                   "settings": settings_key(settings), "seed": seed, "started": started,
                   "finished": time.time(), **{k: v for k, v in result.items()
                                               if k not in ("task", "model", "seed")}}
            with open(out / RESULTS_FILE, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{source.label} {task.name} [{settings_key(settings)}] seed {seed}: "
                  f"{task.main_metric}={rounded(result.get(task.main_metric))}", flush=True)
    return {"ran": ran, "skipped": total - ran}
