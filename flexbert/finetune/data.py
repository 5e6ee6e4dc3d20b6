"""Sequence-classification data: GLUE names, `datasets` names and local CSV/TSV/JSONL files ->
train and eval splits, tokenized and collated for the classifier. Also which kind a task is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from flexbert.config import ConfigError
from flexbert.finetune.config import KINDS, FinetuneConfig, is_local
from flexbert.finetune.tasks import GLUE_DATASET, GLUE_TASKS, GlueTask
from flexbert.finetune.files import (CONLL_SUFFIXES, TABLE_SUFFIXES, fail, read_table, require,
                                     split_files)


def task_kind(cfg: FinetuneConfig) -> str:
    """cfg.kind, else: a folder with corpus.jsonl is retrieval; CoNLL files, or JSONL rows with
    a `tokens` list, are token classification; everything else is sequence classification."""
    if cfg.kind:
        if cfg.kind not in KINDS:
            raise ConfigError(f"finetune.kind: {cfg.kind!r}; allowed: {', '.join(KINDS)}")
        return cfg.kind
    task = cfg.task.split(",")[0]
    if not is_local(task):
        return "classification"
    path = Path(task)
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        return "retrieval"
    if path.is_dir():
        found = split_files(path, CONLL_SUFFIXES + TABLE_SUFFIXES)
        path = found[0] if found else path
    if path.suffix.lower() in CONLL_SUFFIXES:
        return "token_classification"
    if path.is_file() and path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        first = next(iter(read_table(path)), {})
        if isinstance(first.get("tokens"), list):
            return "token_classification"
    return "classification"


def local_split_files(cfg: FinetuneConfig, suffixes: tuple[str, ...]) -> tuple[Path, Path]:
    """(train, eval) from `TRAIN,EVAL`, `TRAIN` + --eval-file, or a folder with train.* and
    dev.* (or validation.* / test.*)."""
    task = cfg.task.strip()
    if Path(task).is_dir():
        found = split_files(task, suffixes)
        if found is None:
            raise ConfigError(f"finetune.task: {task}: a task folder needs train.* and dev.* (or "
                              f"validation.*, test.*) files ending in {', '.join(suffixes)}")
        return found
    files = [p for p in task.split(",") if p]
    if cfg.eval_file:
        files = files[:1] + [cfg.eval_file]
    if len(files) != 2:
        raise ConfigError(f"finetune.task: {task!r}: give a train and an eval file "
                          "(`train.csv,dev.csv`, --eval-file, or a folder)")
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: task file not found")
    return Path(files[0]), Path(files[1])


@dataclass
class TaskData:
    train: Any                 # datasets.Dataset
    eval: Any
    text_fields: list[str]
    label_field: str
    num_labels: int
    problem_type: str
    label_names: Optional[list[str]] = None


def load_task(cfg: FinetuneConfig) -> TaskData:
    """The train and eval splits with their text fields, label field and label count."""
    import datasets

    task = cfg.task.strip()
    if not task:
        raise ConfigError("finetune.task: required (a GLUE name, a datasets name or local files)")
    glue = GLUE_TASKS.get(task.lower())
    if is_local(task):
        splits = {split: _read_local(path, cfg)
                  for split, path in zip(("train", "eval"), local_split_files(cfg, TABLE_SUFFIXES))}
    elif glue is not None:
        name = "mnli" if task.lower().startswith("mnli") else task.lower()
        ds = datasets.load_dataset(GLUE_DATASET, name)
        splits = {"train": ds[cfg.train_split], "eval": ds[cfg.eval_split or glue.eval_split]}
    else:
        name, _, config = task.removeprefix("hf:").partition(":")
        ds = datasets.load_dataset(name, config or cfg.hf_config or None)
        eval_split = cfg.eval_split or next((s for s in ("validation", "dev", "test") if s in ds),
                                            None)
        if eval_split is None:
            raise ConfigError(f"finetune.eval_split: {task!r} has splits {list(ds)}; name one")
        splits = {"train": ds[cfg.train_split], "eval": ds[eval_split]}

    text_fields = list(cfg.text_fields or (glue.text_fields if glue else ()) or _guess_text(splits["train"]))
    columns = splits["train"].column_names
    for key in [*text_fields, cfg.label_field]:
        if key not in columns:
            raise ConfigError(f"finetune: field {key!r} not in the task's columns {columns}")
    for split in ("train", "eval"):
        limit = cfg.max_train_samples if split == "train" else cfg.max_eval_samples
        if limit is not None and limit < len(splits[split]):
            splits[split] = splits[split].select(range(limit))
    return _with_labels(splits, cfg, glue, text_fields)


def _with_labels(splits: dict, cfg: FinetuneConfig, glue: Optional[GlueTask],
                 text_fields: list[str]) -> TaskData:
    import datasets

    label_names = None
    feature = splits["train"].features.get(cfg.label_field)
    if isinstance(feature, datasets.ClassLabel):
        label_names = list(feature.names)
    problem_type = cfg.problem_type
    if problem_type is None:
        if cfg.num_labels is not None:
            problem_type = "regression" if cfg.num_labels == 1 else "single_label_classification"
        elif glue is not None:
            problem_type = glue.problem_type
        else:
            values = splits["train"][cfg.label_field]
            is_float = any(isinstance(v, float) and not float(v).is_integer() for v in values)
            problem_type = "regression" if is_float else "single_label_classification"
    if problem_type == "regression":
        num_labels = 1
    else:
        splits, label_names = _label_ids(splits, cfg.label_field, label_names)
        num_labels = cfg.num_labels or (glue.num_labels if glue else None) or len(label_names or []) \
            or int(max(splits["train"][cfg.label_field])) + 1
    return TaskData(splits["train"], splits["eval"], text_fields, cfg.label_field, num_labels,
                    problem_type, label_names)


def _read_local(path: Path, cfg: FinetuneConfig):
    """A local table checked row by row: every text field a string, every label present."""
    import datasets

    rows = read_table(path)
    if not rows:
        raise fail(path, 1, "no rows")
    text_fields = list(cfg.text_fields or _guess_text_names([k for k in rows[0] if k != "__line__"],
                                                            str(path)))
    for row in rows:
        for key in text_fields:
            require(row, path, key, str)
        label = require(row, path, cfg.label_field, (str, int, float))
        if isinstance(label, str) and _is_number(label):  # CSV cells are strings
            row[cfg.label_field] = float(label) if "." in label else int(label)
    keep = [*text_fields, cfg.label_field]
    return datasets.Dataset.from_list([{k: r[k] for k in keep} for r in rows])


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _guess_text_names(columns: list[str], where: str) -> list[str]:
    for candidates in (("text",), ("sentence",), ("sentence1", "sentence2")):
        if all(c in columns for c in candidates):
            return list(candidates)
    raise ConfigError(f"finetune.text_fields: cannot guess the text field(s) of {where} from "
                      f"{columns}; pass --text-fields")


def _guess_text(ds) -> list[str]:
    return _guess_text_names(ds.column_names, "the task")


def _label_ids(splits: dict, label_field: str, names: Optional[list[str]]):
    """String labels become ids (sorted names, the same mapping for both splits)."""
    values = splits["train"][label_field]
    if values and isinstance(values[0], str):
        names = sorted(set(values) | set(splits["eval"][label_field]))
        index = {n: i for i, n in enumerate(names)}
        splits = {k: v.remove_columns(label_field).add_column(
            label_field, [index[x] for x in v[label_field]]) for k, v in splits.items()}
    return splits, names


def tokenize(ds, tokenizer, task: TaskData, max_len: int):
    def encode(batch):
        texts = [batch[f] for f in task.text_fields]
        enc = tokenizer(*texts, truncation=True, max_length=max_len)
        return {"input_ids": enc["input_ids"], "labels": batch[task.label_field]}

    return ds.map(encode, batched=True, remove_columns=ds.column_names)


def pad_ids(rows: list[dict], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids and attention_mask for rows of token-id lists."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, :len(r["input_ids"])] = 1
    return ids, mask


def collate(pad_id: int, regression: bool):
    def collate_rows(rows: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_ids(rows, pad_id)
        labels = torch.tensor([r["labels"] for r in rows],
                              dtype=torch.float32 if regression else torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate_rows
