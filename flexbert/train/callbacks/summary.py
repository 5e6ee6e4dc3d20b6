"""The end of a run: a summary block on the console (time, steps, tokens, final losses, speed,
where every output went) and loss.png (train and eval loss against tokens) in save_folder."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from flexbert.train.callbacks.console import TRAIN_LOSS, Console, duration, human

log = logging.getLogger("flexbert.train")
PLOT_NAME = "loss.png"


def find_console(trainer: Any) -> Optional[Console]:
    return next((d for d in trainer.logger.destinations if isinstance(d, Console)), None)


def curves(console: Console, metrics_file: Optional[Path]) -> tuple[list, list]:
    """(tokens, loss) for training and evaluation: the whole run from metrics.jsonl when there is
    one (a resumed run included), else what this process saw."""
    if metrics_file is not None and metrics_file.is_file():
        from flexbert.runtime.metrics_file import read_metrics

        rows = read_metrics(str(metrics_file))
        train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r]
        evals = [(r["tokens"], r["metrics/eval/MaskedLoss"]) for r in rows
                 if "metrics/eval/MaskedLoss" in r]
        if train:
            return train, evals
    return console.train_curve, console.eval_curve


def moving_average(ys: Sequence[float]) -> list[float]:
    """Light smoothing for loss curves: the mean over the last ~5 % of the points."""
    k = max(1, len(ys) // 20)
    return [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1])
            for i in range(len(ys))]


def plot_losses(train: list, evals: list, out: Path, title: str,
                masks: Optional[tuple[float, float]] = None) -> Optional[Path]:
    """Train loss (raw and a moving average) and eval loss against tokens. `masks` (train, eval
    masking rates) go into the labels: eval usually masks fewer tokens than training, and its
    easier task gives a lower loss, which reads as nothing when the rates are not shown."""
    train_label, eval_label = ((f"train ({round(100 * masks[0])}% masked, moving average)",
                                f"eval ({round(100 * masks[1])}% masked)") if masks else
                               ("train (moving average)", "eval"))
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        xs, ys = zip(*train)
        ax.plot(xs, ys, color="tab:blue", alpha=0.25, linewidth=0.8)
        ax.plot(xs, moving_average(ys), color="tab:blue", label=train_label)
    if evals:
        xs, ys = zip(*evals)
        ax.plot(xs, ys, color="tab:orange", marker="o", markersize=4, label=eval_label)
    ax.set(title=f"{title}: MLM loss", xlabel="tokens", ylabel="masked-token loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def latest_checkpoint(folder: Path) -> Optional[Path]:
    link = folder / "latest-rank0.pt"
    return Path(os.path.realpath(link)) if link.exists() else None


def summary_lines(recipe: Any, trainer: Any, console: Console, paths: dict[str, Any],
                  quality: Sequence[tuple[str, str]] = ()) -> list[str]:
    state = trainer.state
    wall = time.time() - console.start_time
    steps, tokens = int(state.timestamp.batch), int(state.timestamp.token)
    phase_tokens = tokens - console.start["token"]
    eval_loss = console.last_eval.get("MaskedLoss")
    eval_acc = console.last_eval.get("MaskedAccuracy")
    rows = [
        ("wall time", f"{duration(wall)} (training loop)"),
        ("steps", f"{steps:,}" + (f" ({steps - console.start['batch']:,} this run)"
                                  if console.start["batch"] else "")),
        ("tokens", f"{tokens:,} ({human(tokens)})"),
        ("train loss", f"{console.latest[TRAIN_LOSS]:.4f} (last step)"
         if TRAIN_LOSS in console.latest else "-"),
        ("eval loss", f"{eval_loss:.4f}" + (f", masked accuracy {eval_acc:.4f}"
                                            if eval_acc is not None else "")
         if eval_loss is not None else "- (no evaluation ran)"),
        *quality,
        ("tokens/s", f"{human(phase_tokens / wall)}" if wall > 0 else "-"),
    ]
    rows += [(name, str(value)) for name, value in paths.items() if value]
    width = max(len(name) for name, _ in rows)
    title = f"run {recipe.cfg.run_name} finished"
    return [f"== {title} " + "=" * max(0, 60 - len(title)),
            *(f"  {name:<{width}}  {value}" for name, value in rows), "=" * 64]


def finish(recipe: Any, trainer: Any, hf_folder: Optional[Path]) -> None:
    """Rank 0: write loss.png and print the summary block."""
    from composer.utils import dist

    from flexbert.train.checkpointing.saver import local_save_folder

    console = find_console(trainer)
    if console is None or dist.get_global_rank() != 0:
        return
    cfg = recipe.cfg
    folder = Path(local_save_folder(cfg.save_folder)) if cfg.save_folder else None
    metrics = folder / cfg.callbacks.metrics_jsonl if folder and cfg.callbacks.metrics_jsonl else None
    plot = None
    if folder is not None:
        try:
            masks = (recipe.data.mlm_probability, recipe.data.eval_mlm_probability)
            plot = plot_losses(*curves(console, metrics), folder / PLOT_NAME, cfg.run_name, masks)
        except (OSError, ValueError) as err:  # a summary must not fail a finished run
            log.warning("could not write %s: %s", folder / PLOT_NAME, err)
    checkpoint = latest_checkpoint(folder) if folder else None
    paths = {"checkpoints": f"{folder}/" + (f" (latest {checkpoint.name})" if checkpoint else "")
             if checkpoint else None,
             "metrics": metrics if metrics and metrics.is_file() else None,
             "loss plot": plot, "hf folder": hf_folder}
    print("\n".join(summary_lines(recipe, trainer, console, paths,
                                  model_quality(recipe, trainer, console))), flush=True)


def model_quality(recipe: Any, trainer: Any, console: Console) -> list[tuple[str, str]]:
    """Unigram baseline and fill-mask rows (flexbert.train.callbacks.baseline); the model is the training one,
    except under FSDP, whose shards rank 0 alone cannot run."""
    from flexbert.train.callbacks.baseline import quality_rows
    from flexbert.runtime.distributed import unwrap

    state = trainer.state
    model = None if state.fsdp_enabled else unwrap(state.model).model
    return quality_rows(recipe, model, console.last_eval.get("MaskedLoss"))
