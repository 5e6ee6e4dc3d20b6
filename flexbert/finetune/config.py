"""The fine-tune settings (every `flexbert finetune` flag, a sweep's `finetune:` keys and each
`flexbert eval` run) and the task's short name."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

KINDS = ("classification", "token_classification", "retrieval")


@dataclass
class FinetuneConfig:
    """Every `flexbert finetune` flag; a sweep's `finetune:` section uses the same keys."""

    model: Optional[str] = None            # filled in by the sweep for each run
    task: str = ""
    kind: Optional[str] = None             # classification | token_classification | retrieval; default: from the files
    eval_file: Optional[str] = None
    text_fields: Optional[list[str]] = None
    label_field: str = "label"
    num_labels: Optional[int] = None       # default: GLUE table, else inferred from the labels
    problem_type: Optional[str] = None     # default: regression for 1 label, else single-label
    hf_config: Optional[str] = None        # datasets config name for a non-GLUE dataset
    train_split: str = "train"
    eval_split: Optional[str] = None
    model_config: Optional[str] = None     # for Composer checkpoints without a model config
    tokenizer: Optional[str] = None        # default: the model folder (or its tokenizer/)
    max_seq_len: int = 128
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 1e-6
    warmup: float = 0.06                   # fraction of the run
    epochs: float = 3.0
    max_duration: Optional[str] = None     # Composer time string; overrides epochs
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    pooling: Optional[str] = None          # cls | mean; default: the model's (retrieval: mean)
    dropout: Optional[float] = None        # classifier dropout; default: the model's
    seed: int = 17
    device: Optional[str] = None
    precision: str = "amp_bf16"            # fp32 on CPU
    save_folder: Optional[str] = None      # results.json (+ checkpoints with save_checkpoints)
    save_checkpoints: bool = False
    progress_bar: bool = False
    name: Optional[str] = None             # label in tables; default: GLUE name or task folder


def task_name(cfg: FinetuneConfig) -> str:
    """A short stable label: --name, the GLUE name, the task folder's name (a folder, or the
    folder holding the train file), or the dataset name."""
    from flexbert.finetune.tasks import GLUE_TASKS

    if cfg.name:
        return cfg.name
    task = cfg.task.split(",")[0]
    if task.lower() in GLUE_TASKS:
        return task.lower()
    if is_local(task):
        path = Path(task).resolve()
        folder = path if path.is_dir() else path.parent
        return folder.name or path.stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task.removeprefix("hf:"))


def is_local(task: str) -> bool:
    from flexbert.finetune.files import CONLL_SUFFIXES, TABLE_SUFFIXES

    first = task.split(",")[0]
    return first.lower().endswith(TABLE_SUFFIXES + CONLL_SUFFIXES) or os.path.exists(first)
