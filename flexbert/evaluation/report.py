"""results.jsonl -> mean and std over seeds (the best setting of each task's grid), a table
(table.csv long, table.md wide) and curves.png: each metric against tokens seen."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from flexbert.evaluation.glue import glue_average
from flexbert.evaluation.tasks import EvalTask

# Bookkeeping in a result that is not a score.
NOT_METRICS = {"source", "path", "step", "tokens", "task", "kind", "settings", "seed", "started",
               "finished", "seconds", "steps", "train_loss", "num_labels", "train_examples",
               "eval_examples", "corpus_size", "problem_type"}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def summarize(rows: list[dict], tasks: Sequence[EvalTask]) -> list[dict]:
    """One row per (source, task, metric): mean and std over seeds at the task's best setting
    (by its main metric), with the source's step and tokens; plus glue/average when complete."""
    main = {t.name: t.main_metric for t in tasks}
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["task"] in main:
            grouped[(r["source"], r["task"], r["settings"])].append(r)
    best: dict[tuple, list[dict]] = {}
    for (source, task, _), runs in grouped.items():
        score = mean_std([float(r.get(main[task], float("-inf"))) for r in runs])[0]
        if (source, task) not in best or score > best[(source, task)][0]:
            best[(source, task)] = (score, runs)
    out = []
    for (source, task), (_, runs) in sorted(best.items()):
        metrics = sorted({k for r in runs for k, v in r.items()
                          if k not in NOT_METRICS and isinstance(v, (int, float))})
        for metric in metrics:
            mean, std = mean_std([float(r[metric]) for r in runs if metric in r])
            out.append({"source": source, "step": runs[0].get("step"), "tokens": runs[0].get("tokens"),
                        "task": task, "metric": metric, "mean": mean, "std": std,
                        "seeds": len(runs), "settings": runs[0]["settings"]})
    return out + _glue_rows(out, main)


def _glue_rows(summary: list[dict], main: dict[str, str]) -> list[dict]:
    by_source: dict[str, dict] = defaultdict(dict)
    position = {}
    for row in summary:
        if main.get(row["task"]) == row["metric"]:
            by_source[row["source"]][row["task"]] = row["mean"]
            position[row["source"]] = (row["step"], row["tokens"])
    out = []
    for source, scores in by_source.items():
        average = glue_average(scores)
        if average is not None:
            out.append({"source": source, "step": position[source][0], "tokens": position[source][1],
                        "task": "glue", "metric": "average", "mean": average, "std": 0.0,
                        "seeds": 0, "settings": "best per task"})
    return out


def write_report(summary: list[dict], out: Path) -> list[Path]:
    out = Path(out)
    columns = ["source", "step", "tokens", "task", "metric", "mean", "std", "seeds", "settings"]
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(summary)
    (out / "table.md").write_text(markdown(summary))
    return [out / "table.csv", out / "table.md", plot(summary, out / "curves.png")]


def _sources_in_order(summary: list[dict]) -> list[str]:
    order = {r["source"]: (r["tokens"] if r["tokens"] is not None else -1, r["source"]) for r in summary}
    return sorted(order, key=order.get)


def markdown(summary: list[dict]) -> str:
    columns = sorted({(r["task"], r["metric"]) for r in summary})
    cell = {(r["source"], r["task"], r["metric"]): r for r in summary}
    tokens = {r["source"]: r["tokens"] for r in summary}
    lines = ["| model | tokens | " + " | ".join(f"{t} {m}" for t, m in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for source in _sources_in_order(summary):
        values = []
        for t, m in columns:
            r = cell.get((source, t, m))
            values.append("" if r is None else f"{r['mean']:.4g}" + (f" ± {r['std']:.2g}" if r["seeds"] > 1 else ""))
        count = tokens[source]
        lines.append(f"| {source} | {count:,} | " if count is not None else f"| {source} | - | ")
        lines[-1] += " | ".join(values) + " |"
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path) -> Path:
    """One panel per (task, metric): mean ± std over seeds against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["task"], r["metric"]) for r in summary if r["tokens"] is not None})
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (task, metric) in zip(axes.flat, panels):
        points = sorted((r["tokens"], r["mean"], r["std"]) for r in summary
                        if (r["task"], r["metric"]) == (task, metric) and r["tokens"] is not None)
        xs, ys, es = zip(*points)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3)
        ax.set_title(f"{task}: {metric}", fontsize=10)
        ax.set_xlabel("tokens seen")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
