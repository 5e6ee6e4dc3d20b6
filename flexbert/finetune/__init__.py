"""Downstream fine-tuning: FlexBertForSequenceClassification on a classification or regression
task, trained through Composer.

    flexbert finetune --model runs/flexbert-tiny --task sst2
    flexbert finetune --model runs/t/latest-rank0.pt --model-config configs/tiny.yaml \
        --task train.jsonl --eval-file dev.jsonl --text-fields sentence --label-field label

`--model` is a FlexBERT model directory (`flexbert.yaml` + `model.safetensors`), a Hugging Face
ModernBERT folder (`config.json`), or a Composer checkpoint (a `.pt` file, or a folder holding
`latest-rank0.pt`) whose model config comes from `--model-config` or a `flexbert.yaml` beside it.
`--task` is a GLUE task name (fields and label counts known), any `datasets` name
(`hf:NAME[:CONFIG]` or a bare name, with `--text-fields` / `--label-field`), or local CSV / JSONL
files (`train.csv` or `train.csv,dev.csv`, or `--eval-file`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch

from flexbert.cli import command
from flexbert.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)


# --- tasks ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GlueTask:
    text_fields: tuple[str, ...]
    num_labels: int
    eval_split: str = "validation"

    @property
    def problem_type(self) -> str:
        return "regression" if self.num_labels == 1 else "single_label_classification"


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(("sentence",), 2),
    "sst2": GlueTask(("sentence",), 2),
    "mrpc": GlueTask(("sentence1", "sentence2"), 2),
    "qqp": GlueTask(("question1", "question2"), 2),
    "stsb": GlueTask(("sentence1", "sentence2"), 1),
    "mnli": GlueTask(("premise", "hypothesis"), 3, "validation_matched"),
    "mnli_mismatched": GlueTask(("premise", "hypothesis"), 3, "validation_mismatched"),
    "qnli": GlueTask(("question", "sentence"), 2),
    "rte": GlueTask(("sentence1", "sentence2"), 2),
    "wnli": GlueTask(("sentence1", "sentence2"), 2),
}
GLUE_DATASET = "nyu-mll/glue"
LOCAL_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".ndjson")


@dataclass
class FinetuneConfig:
    """Every `flexbert finetune` flag; a sweep's `finetune:` section uses the same keys."""

    model: Optional[str] = None            # filled in by the sweep for each run
    task: str = ""
    eval_file: Optional[str] = None
    text_fields: Optional[list[str]] = None
    label_field: str = "label"
    num_labels: Optional[int] = None       # default: GLUE table, else inferred from the labels
    problem_type: Optional[str] = None     # default: regression for 1 label, else single-label
    hf_config: Optional[str] = None        # datasets config name for a non-GLUE dataset
    train_split: str = "train"
    eval_split: Optional[str] = None
    model_config: Optional[str] = None     # for Composer checkpoints without flexbert.yaml
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
    pooling: Optional[str] = None          # cls | mean; default: the model's
    dropout: Optional[float] = None        # classifier dropout; default: the model's
    seed: int = 17
    device: Optional[str] = None
    precision: str = "amp_bf16"            # fp32 on CPU
    save_folder: Optional[str] = None      # results.json (+ checkpoints with save_checkpoints)
    save_checkpoints: bool = False
    progress_bar: bool = False
    name: Optional[str] = None             # label in sweep tables; default: task name


def task_name(cfg: FinetuneConfig) -> str:
    """A short stable label: the GLUE name, the dataset name, or the train file's stem."""
    if cfg.name:
        return cfg.name
    task = cfg.task.split(",")[0]
    if task.lower() in GLUE_TASKS:
        return task.lower()
    if _is_local(task):
        return Path(task).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task.removeprefix("hf:"))


def _is_local(task: str) -> bool:
    first = task.split(",")[0]
    return first.lower().endswith(LOCAL_SUFFIXES) or os.path.exists(first)


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
    if _is_local(task):
        files = [p for p in task.split(",") if p]
        if cfg.eval_file:
            files = files[:1] + [cfg.eval_file]
        if len(files) != 2:
            raise ConfigError(f"finetune.task: {task!r}: give a train and an eval file "
                              "(`train.csv,dev.csv` or --eval-file)")
        for path in files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: task file not found")
        splits = {"train": _read_local(files[0]), "eval": _read_local(files[1])}
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


def _read_local(path: str):
    import datasets

    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return datasets.load_dataset("csv", data_files=path, split="train",
                                     delimiter="\t" if suffix == ".tsv" else ",")
    return datasets.load_dataset("json", data_files=path, split="train")


def _guess_text(ds) -> list[str]:
    for candidates in (("text",), ("sentence",), ("sentence1", "sentence2")):
        if all(c in ds.column_names for c in candidates):
            return list(candidates)
    raise ConfigError(f"finetune.text_fields: cannot guess the text field(s) from {ds.column_names}; "
                      "pass --text-fields")


def _label_ids(splits: dict, label_field: str, names: Optional[list[str]]):
    """String labels become ids (sorted names, the same mapping for both splits)."""
    values = splits["train"][label_field]
    if values and isinstance(values[0], str):
        names = sorted(set(values) | set(splits["eval"][label_field]))
        index = {n: i for i, n in enumerate(names)}
        splits = {k: v.remove_columns(label_field).add_column(
            label_field, [index[x] for x in v[label_field]]) for k, v in splits.items()}
    return splits, names


# --- model ----------------------------------------------------------------------------------------

def load_encoder_for_classification(path: str, cfg: FinetuneConfig, task: TaskData):
    """FlexBertForSequenceClassification with the encoder (and MLM head's dense/norm, as
    transformers does) from `path`; the classifier layer starts fresh."""
    from omegaconf import OmegaConf

    from flexbert.config import model_config
    from flexbert.model import FlexBertForSequenceClassification

    model_cfg, state = read_pretrained(path, cfg.model_config)
    tree = OmegaConf.structured(model_cfg)
    tree.classifier.num_labels = task.num_labels
    tree.classifier.problem_type = task.problem_type
    if cfg.pooling is not None:
        tree.classifier.pooling = cfg.pooling
    if cfg.dropout is not None:
        tree.classifier.dropout = cfg.dropout
    model = FlexBertForSequenceClassification(model_config(tree, source=str(path)))
    wanted = {k: v for k, v in state.items() if not k.startswith("decoder.") and "inv_freq" not in k}
    result = model.load_state_dict(wanted, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("classifier.") and "inv_freq" not in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: weights do not fit the classifier; missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    return model


def read_pretrained(path: str, model_config_path: Optional[str] = None) -> tuple[ModelConfig, dict]:
    """(ModelConfig, state dict in FlexBertForMaskedLM names) from any supported model source."""
    from flexbert.hf import CONFIG_FILE, WEIGHTS_FILE, from_transformers, load_flexbert

    p = Path(path)
    if p.is_dir() and (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file():
        model = load_flexbert(p)
        return model.config, model.state_dict()
    if p.is_dir() and (p / "config.json").is_file():
        model = from_transformers(str(p))
        return model.config, model.state_dict()
    checkpoint = p / "latest-rank0.pt" if p.is_dir() else p
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{path}: not a FlexBERT model directory ({CONFIG_FILE} + "
                                f"{WEIGHTS_FILE}), a Hugging Face folder (config.json) or a "
                                "Composer checkpoint")
    model_cfg = composer_model_config(checkpoint, model_config_path)
    raw = torch.load(checkpoint, map_location="cpu", weights_only=False)
    weights = raw["state"]["model"]
    prefix = "model."  # ComposerFlexBertMLM.model is the FlexBertForMaskedLM
    state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    return model_cfg, state


def composer_model_config(checkpoint: Path, config_path: Optional[str]) -> ModelConfig:
    """The ModelConfig of a Composer checkpoint: `--model-config` (a recipe, a model preset or a
    flexbert.yaml), else a flexbert.yaml beside the checkpoint or in its folder's parent."""
    from flexbert.config import load_yaml, model_config

    candidates = [Path(config_path)] if config_path else [
        checkpoint.parent / "flexbert.yaml", checkpoint.parent / "model" / "flexbert.yaml"]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{checkpoint}: a Composer checkpoint does not hold the model config; "
                                "pass --model-config RECIPE_OR_MODEL_YAML")
    raw = load_yaml(path)
    if "max_duration" in raw or "run_name" in raw:  # a training recipe
        from flexbert.train.config import resolve_model_tree

        return model_config(resolve_model_tree(raw.get("model"), path), str(path))
    return model_config(raw.model if "model" in raw else raw, str(path))


def load_tokenizer(model_path: str, tokenizer: Optional[str]):
    from transformers import AutoTokenizer

    p = Path(model_path)
    base = p if p.is_dir() else p.parent
    candidates = [Path(tokenizer)] if tokenizer else [base, base / "tokenizer", base / "hf",
                                                      base / "model"]
    for c in candidates:
        if (c / "tokenizer.json").is_file() or (c / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(c))
    if tokenizer:  # a hub name
        return AutoTokenizer.from_pretrained(tokenizer)
    raise FileNotFoundError(f"{model_path}: no tokenizer beside the model; pass --tokenizer DIR")


# --- Composer -------------------------------------------------------------------------------------

def _collate(pad_id: int, regression: bool):
    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, :len(r["input_ids"])] = 1
        labels = torch.tensor([r["labels"] for r in rows],
                              dtype=torch.float32 if regression else torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def _tokenize(ds, tokenizer, task: TaskData, max_len: int):
    def encode(batch):
        texts = [batch[f] for f in task.text_fields]
        enc = tokenizer(*texts, truncation=True, max_length=max_len)
        return {"input_ids": enc["input_ids"], "labels": batch[task.label_field]}

    return ds.map(encode, batched=True, remove_columns=ds.column_names)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune and evaluate; returns (and writes to save_folder/results.json) the final eval
    metrics under their short names (accuracy, f1, matthews / pearson, spearman, mse)."""
    import datasets
    from composer import Evaluator, Trainer
    from composer.core import DataSpec
    from composer.loggers import InMemoryLogger
    from composer.optim import DecoupledAdamW, LinearWithWarmupScheduler
    from composer.utils import reproducibility
    from torch.utils.data import DataLoader

    from flexbert.finetune.model import ComposerFlexBertClassifier

    if not cfg.model:
        raise ConfigError("finetune.model: required (checkpoint, FlexBERT dir or HF folder)")
    start = time.time()
    reproducibility.seed_all(cfg.seed)
    if not cfg.progress_bar:
        datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message="Cannot split tensor of length")
    task = load_task(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer)
    model = load_encoder_for_classification(cfg.model, cfg, task)
    composer_model = ComposerFlexBertClassifier(model)
    regression = task.problem_type == "regression"
    train_ds = _tokenize(task.train, tokenizer, task, cfg.max_seq_len)
    eval_ds = _tokenize(task.eval, tokenizer, task, cfg.max_seq_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id
    collate = _collate(pad_id, regression)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=False,
                          collate_fn=collate, generator=generator)
    eval_dl = DataLoader(eval_ds, batch_size=cfg.eval_batch_size, shuffle=False, collate_fn=collate)

    def spec(dl):
        return DataSpec(dl, get_num_samples_in_batch=lambda b: int(b["input_ids"].shape[0]),
                        get_num_tokens_in_batch=lambda b: int(b["attention_mask"].sum()))

    from flexbert.train.builder import pick_device, pick_precision
    from flexbert.train.config import TrainerConfig

    tcfg = TrainerConfig(device=cfg.device, precision=cfg.precision)
    device = pick_device(tcfg)
    duration = cfg.max_duration or _epochs_to_batches(cfg.epochs, len(train_dl))
    optimizer = DecoupledAdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                               weight_decay=cfg.weight_decay)
    memory = InMemoryLogger()
    save = cfg.save_folder if (cfg.save_folder and cfg.save_checkpoints) else None
    trainer = Trainer(
        model=composer_model, train_dataloader=spec(train_dl),
        eval_dataloader=Evaluator(label="eval", dataloader=spec(eval_dl),
                                  metric_names=list(composer_model.eval_metrics)),
        max_duration=duration, eval_interval="1ep" if not cfg.max_duration else duration,
        optimizers=optimizer,
        schedulers=LinearWithWarmupScheduler(t_warmup=f"{cfg.warmup}dur", alpha_f=0.0),
        device=device, precision=pick_precision(tcfg, device), seed=cfg.seed,
        loggers=[memory], progress_bar=cfg.progress_bar, log_to_console=False,
        save_folder=save, save_interval="1ep", save_overwrite=True,
    )
    trainer.fit()
    trainer.eval()  # the final weights, whatever the eval interval
    # Composer evaluates with its own copies of the metrics, kept on the state per evaluator.
    values = {name.lower(): float(m.compute()) for name, m in trainer.state.eval_metrics["eval"].items()}
    trainer.close()
    train_loss = memory.most_recent_values.get("loss/train/total")
    result = {"task": task_name(cfg), "model": str(cfg.model), "problem_type": task.problem_type,
              "num_labels": task.num_labels, "train_examples": len(train_ds),
              "eval_examples": len(eval_ds), "steps": int(trainer.state.timestamp.batch),
              "train_loss": float(train_loss) if train_loss is not None else None,
              "seconds": round(time.time() - start, 2), **values}
    if cfg.save_folder:
        os.makedirs(cfg.save_folder, exist_ok=True)
        Path(cfg.save_folder, "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _epochs_to_batches(epochs: float, batches_per_epoch: int) -> str:
    """Fractional epochs as a batch count (Composer's 'ep' unit is whole epochs)."""
    if epochs <= 0:
        raise ConfigError(f"finetune.epochs: must be > 0, got {epochs}")
    return f"{max(1, math.ceil(epochs * batches_per_epoch))}ba"


# --- CLI ------------------------------------------------------------------------------------------

def _add_args(parser: argparse.ArgumentParser) -> None:
    defaults = FinetuneConfig()
    parser.add_argument("--model", required=True,
                        help="Composer checkpoint (.pt or folder with latest-rank0.pt), FlexBERT "
                             "model dir, or Hugging Face ModernBERT folder")
    parser.add_argument("--task", required=True,
                        help="GLUE name (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli), a "
                             "datasets name (hf:NAME[:CONFIG]), or TRAIN_FILE[,EVAL_FILE] (csv/jsonl)")
    parser.add_argument("--eval-file")
    parser.add_argument("--text-fields", help="comma-separated text field(s); two make pairs")
    parser.add_argument("--label-field", default=defaults.label_field)
    parser.add_argument("--num-labels", type=int)
    parser.add_argument("--problem-type", choices=["single_label_classification", "regression"])
    parser.add_argument("--hf-config")
    parser.add_argument("--train-split", default=defaults.train_split)
    parser.add_argument("--eval-split")
    parser.add_argument("--model-config", help="recipe or model YAML for a Composer checkpoint")
    parser.add_argument("--tokenizer", help="tokenizer folder or hub name (default: the model's)")
    parser.add_argument("--max-seq-len", type=int, default=defaults.max_seq_len)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--warmup", type=float, default=defaults.warmup)
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--max-duration", help="Composer time string, e.g. 200ba (overrides --epochs)")
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--max-eval-samples", type=int)
    parser.add_argument("--pooling", choices=["cls", "mean"])
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", choices=["cpu", "gpu"])
    parser.add_argument("--precision", default=defaults.precision)
    parser.add_argument("--save-folder", help="writes results.json here")
    parser.add_argument("--save-checkpoints", action="store_true")
    parser.add_argument("--progress-bar", action="store_true")


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    values = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig) if hasattr(args, f.name)}
    if isinstance(values.get("text_fields"), str):
        values["text_fields"] = [t.strip() for t in values["text_fields"].split(",") if t.strip()]
    return FinetuneConfig(**values)


@command("finetune", "fine-tune a pretrained FlexBERT on a classification or regression task",
         _add_args)
def finetune_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    result = finetune(config_from_args(args))
    print(json.dumps(result, indent=2))
    return 0
