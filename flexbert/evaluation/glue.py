"""The GLUE preset: the 8 tasks, the per-task hyper-parameter grid, the seeds and the average.

The grid follows the ModernBERT paper's GLUE search (arXiv 2412.13663, appendix): learning rates
{1e-5, 3e-5, 5e-5, 8e-5}; 1-3 epochs on the large tasks (MNLI, QNLI, QQP, SST-2) and 2-10 on the
small ones. Batch sizes and weight decays are the ModernBERT repository's per-task job defaults
(src/evals/glue_jobs.py), seeds its eval-config defaults (generate_eval_config.py). The reported
number of a task is its best grid point's mean over seeds, as in the paper (best on dev).
"""

from __future__ import annotations

import itertools
from typing import Iterable

GLUE_SUITE = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
GLUE_SEEDS = (1618, 42, 6033)
LEARNING_RATES = (1e-5, 3e-5, 5e-5, 8e-5)
LARGE = (1, 2, 3)
SMALL = (2, 5, 10)
# task -> (epochs to try, batch size, weight decay)
GLUE_SETTINGS: dict[str, tuple[tuple[int, ...], int, float]] = {
    "cola": (SMALL, 32, 5e-6), "sst2": (LARGE, 16, 3e-6), "mrpc": (SMALL, 32, 8e-6),
    "stsb": (SMALL, 32, 3e-6), "qqp": (LARGE, 16, 3e-6), "mnli": (LARGE, 64, 1e-6),
    "qnli": (LARGE, 16, 1e-6), "rte": (SMALL, 16, 1e-5),
}
# The metric a task is ranked and averaged by (GLUE's conventions as the paper reports them).
MAIN_METRIC = {"cola": "matthews", "sst2": "accuracy", "mrpc": "f1", "stsb": "spearman",
               "qqp": "accuracy", "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy"}


def glue_grid(task: str) -> list[dict]:
    """Every grid point of `task` as FinetuneConfig overrides."""
    epochs, batch, decay = GLUE_SETTINGS[task]
    return [{"lr": lr, "epochs": float(ep), "batch_size": batch, "weight_decay": decay}
            for lr, ep in itertools.product(LEARNING_RATES, epochs)]


def best_point(points: Iterable[tuple[dict, float]]) -> tuple[dict, float]:
    """(settings, score) with the highest mean score over seeds."""
    return max(points, key=lambda p: p[1])


def glue_average(scores: dict[str, float]) -> float | None:
    """Mean of the 8 tasks' main metrics (in %); None until every task has a score."""
    if not all(t in scores for t in GLUE_SUITE):
        return None
    return sum(100.0 * scores[t] for t in GLUE_SUITE) / len(GLUE_SUITE)


def check_reachable(tasks: Iterable[str]) -> None:
    """One clear line when the GLUE data cannot be had (offline and not cached)."""
    from flexbert.config import ConfigError
    from flexbert.finetune.tasks import GLUE_DATASET

    needed = sorted({t for t in tasks if t in GLUE_SETTINGS})
    if not needed:
        return
    import datasets

    try:
        datasets.load_dataset_builder(GLUE_DATASET, needed[0])
    except Exception as err:  # offline, no cache, hub errors: all mean "cannot run"
        raise ConfigError(f"--tasks {','.join(needed)}: the GLUE data ({GLUE_DATASET} on the "
                          f"Hugging Face Hub) is not reachable from here and not cached "
                          f"({type(err).__name__}); run where the Hub is reachable") from None
