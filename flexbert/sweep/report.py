"""Sweep reporting: per-run figures from metrics.jsonl and fine-tuning results ->
results.csv, results.md and results.png in the sweep folder."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from flexbert.sweep.plan import FINETUNE_DIR, Run, Sweep


def is_stale(result_file: Path, run: Run) -> bool:
    """A stage output older than the run's latest checkpoint came from earlier pretraining
    (runs retrained outside `flexbert sweep`, e.g. from --print-commands)."""
    checkpoint = run.folder / "latest-rank0.pt"
    return checkpoint.exists() and result_file.stat().st_mtime < checkpoint.stat().st_mtime


def count_parameters(model_cfg: Any) -> int:
    """Parameters of the MLM model, counted on the meta device (nothing allocated)."""
    import torch

    from flexbert.model import FlexBertForMaskedLM

    with torch.device("meta"):
        return FlexBertForMaskedLM(model_cfg).num_parameters()


def summarize_run(sweep: Sweep, run: Run) -> dict[str, Any]:
    """Final figures of one run from its metrics.jsonl (and fine-tuning results)."""
    from flexbert.runtime.metrics_file import read_metrics
    from flexbert.train.recipe.load import load_recipe

    recipe = load_recipe(sweep.base, run.overrides)
    metrics_file = run.folder / (recipe.cfg.callbacks.metrics_jsonl or "metrics.jsonl")
    rows = read_metrics(str(metrics_file)) if metrics_file.is_file() else []
    evals = [r for r in rows if "metrics/eval/MaskedLoss" in r]
    # Throughput: the mean over the second half of the run (the sliding window has filled and
    # start-up steps are excluded).
    speeds = [r["throughput/tokens_per_sec"] for r in rows[len(rows) // 2:]
              if "throughput/tokens_per_sec" in r]
    done = json.loads(run.done_file.read_text()) if run.done_file.is_file() else {}
    summary = {
        "run": run.name,
        "overrides": " ".join(run.own),
        "steps": rows[-1]["step"] if rows else 0,
        "tokens": rows[-1]["tokens"] if rows else 0,
        "params": count_parameters(recipe.model),
        "eval_loss": evals[-1]["metrics/eval/MaskedLoss"] if evals else math.nan,
        "eval_masked_acc": evals[-1].get("metrics/eval/MaskedAccuracy", math.nan) if evals else math.nan,
        "train_loss": (sum(r["loss"] for r in rows[-5:]) / len(rows[-5:])) if rows else math.nan,
        "tokens_per_sec": sum(speeds) / len(speeds) if speeds else math.nan,
        "wall_s": done.get("seconds", math.nan),
    }
    for task in sweep.finetune:
        from flexbert.finetune import task_name

        result_file = run.folder / FINETUNE_DIR / task_name(task) / "results.json"
        current = result_file.is_file() and not is_stale(result_file, run)
        result = json.loads(result_file.read_text()) if current else {}
        for key in ("accuracy", "f1", "matthews", "pearson", "spearman"):
            if key in result:
                summary[f"{task_name(task)}/{key}"] = result[key]
    summary["_curve"] = [(r["tokens"], r["metrics/eval/MaskedLoss"]) for r in evals]
    summary["_train_curve"] = [(r["tokens"], r["loss"]) for r in rows]
    return summary


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_report(sweep: Sweep) -> list[dict[str, Any]]:
    """results.csv, results.md and results.png (eval MLM loss over tokens) in the sweep folder."""
    summaries = [summarize_run(sweep, run) for run in sweep.runs]
    columns = [k for k in summaries[0] if not k.startswith("_")]
    for s in summaries[1:]:
        columns += [k for k in s if not k.startswith("_") and k not in columns]
    with open(sweep.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for s in summaries:
            writer.writerow({k: s.get(k, "") for k in columns})
    best = min((s for s in summaries if not math.isnan(s["eval_loss"])),
               key=lambda s: s["eval_loss"], default=None)
    lines = [f"# Sweep `{sweep.name}`", "",
             f"Base `{sweep.base}`; {len(summaries)} runs; figures are the last evaluation "
             "(eval loss, masked accuracy at 15 % masking), the mean of the last 5 train losses, "
             "and tokens/s over the second half of each run.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for s in summaries:
        cells = [f"{s[k]:.1f}" if k.endswith("_s") and isinstance(s.get(k), float)
                 and not math.isnan(s[k]) else _fmt(s.get(k, "")) for k in columns]
        if s is best:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![eval MLM loss over tokens](results.png)", ""]
    (sweep.out / "results.md").write_text("\n".join(lines))
    plot(summaries, sweep.out / "results.png", sweep.name)
    return [{k: v for k, v in s.items() if not k.startswith("_")} for s in summaries]


def plot(summaries: list[dict], out: Path, title: str) -> Path:
    import matplotlib

    from flexbert.train.callbacks.summary import moving_average

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_eval, ax_train) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in summaries:
        if s["_curve"]:
            xs, ys = zip(*s["_curve"])
            ax_eval.plot(xs, ys, marker="o", markersize=3, label=s["run"])
        if s["_train_curve"]:
            xs, ys = zip(*s["_train_curve"])
            ax_train.plot(xs, moving_average(ys), label=s["run"])
    ax_eval.set(title=f"{title}: eval MLM loss", xlabel="tokens", ylabel="masked-token loss (15 %)")
    ax_train.set(title="train MLM loss (moving average)", xlabel="tokens", ylabel="loss (30 %)")
    for ax in (ax_eval, ax_train):
        ax.grid(alpha=0.3)
    ax_eval.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
