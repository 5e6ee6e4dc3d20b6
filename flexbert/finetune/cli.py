"""`flexbert finetune`: its options (each with help and its default) -> FinetuneConfig -> a run."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields

from flexbert.commands import command
from flexbert.finetune.config import KINDS, FinetuneConfig

# option -> (help, extra add_argument keywords); the default is appended from FinetuneConfig.
OPTIONS: dict[str, tuple[str, dict]] = {
    "model": ("Composer checkpoint (.pt or folder with latest-rank0.pt), FlexBERT model dir, or "
              "Hugging Face ModernBERT folder", {"required": True}),
    "task": ("GLUE name (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli), a datasets name "
             "(hf:NAME[:CONFIG]), TRAIN_FILE[,EVAL_FILE] (csv/tsv/jsonl/conll), or a task folder "
             "(train.* + dev.*, or a BEIR folder)", {"required": True}),
    "kind": ("task kind; default: detected from the files", {"choices": KINDS}),
    "name": ("the task's name in results and tables; default: the GLUE name or the task folder", {}),
    "eval_file": ("eval split file when --task is a single train file", {}),
    "text_fields": ("comma-separated text field(s); two make pairs; default: text, sentence, or "
                    "sentence1,sentence2", {}),
    "label_field": ("label field (token tasks: the tag list field)", {}),
    "num_labels": ("number of classes; default: from the labels", {"type": int}),
    "problem_type": ("default: regression for float labels",
                     {"choices": ["single_label_classification", "regression"]}),
    "hf_config": ("datasets config name for a non-GLUE dataset", {}),
    "train_split": ("datasets split to train on", {}),
    "eval_split": ("datasets split to evaluate on; default: validation, dev or test", {}),
    "model_config": ("recipe or model YAML for a Composer checkpoint without a model config", {}),
    "tokenizer": ("tokenizer folder or hub name; default: the model's", {}),
    "max_seq_len": ("tokens per example", {"type": int}),
    "batch_size": ("training batch size", {"type": int}),
    "eval_batch_size": ("evaluation batch size", {"type": int}),
    "lr": ("peak learning rate (DecoupledAdamW)", {"type": float}),
    "weight_decay": ("decoupled weight decay", {"type": float}),
    "warmup": ("linear warmup, fraction of the run", {"type": float}),
    "epochs": ("training epochs (fractions allowed)", {"type": float}),
    "max_duration": ("Composer time string, e.g. 200ba (overrides --epochs)", {}),
    "max_train_samples": ("use only the first N training examples", {"type": int}),
    "max_eval_samples": ("use only the first N eval examples", {"type": int}),
    "pooling": ("cls or mean; default: the model's (retrieval: mean)", {"choices": ["cls", "mean"]}),
    "dropout": ("classifier dropout; default: the model's", {"type": float}),
    "seed": ("seed for the new head's init, shuffling and dropout", {"type": int}),
    "device": ("default: gpu when available", {"choices": ["cpu", "gpu"]}),
    "precision": ("Composer precision (amp_* runs in fp32 on CPU)", {}),
    "save_folder": ("writes results.json here", {}),
    "save_checkpoints": ("also save Composer checkpoints in --save-folder", {"action": "store_true"}),
    "progress_bar": ("show progress bars", {"action": "store_true"}),
}


def add_options(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """Add the named options with their help and FinetuneConfig's default."""
    defaults = FinetuneConfig()
    for name in names:
        help_text, extra = OPTIONS[name]
        default = getattr(defaults, name)
        shown = "off" if extra.get("action") == "store_true" else default
        if not extra.get("required"):
            help_text = f"{help_text} (default: {shown})"
        kwargs = dict(extra)
        if "action" not in kwargs and not kwargs.get("required"):
            kwargs["default"] = default
        parser.add_argument("--" + name.replace("_", "-"), help=help_text, **kwargs)


def _add_args(parser: argparse.ArgumentParser) -> None:
    add_options(parser, list(OPTIONS))


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    values = {f.name: getattr(args, f.name) for f in fields(FinetuneConfig) if hasattr(args, f.name)}
    if isinstance(values.get("text_fields"), str):
        values["text_fields"] = [t.strip() for t in values["text_fields"].split(",") if t.strip()]
    return FinetuneConfig(**values)


@command("finetune", "fine-tune a pretrained FlexBERT on a classification, token-classification "
         "or retrieval task", _add_args)
def finetune_command(args: argparse.Namespace) -> int:
    from flexbert.finetune.training import finetune

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    result = finetune(config_from_args(args))
    print(json.dumps(result, indent=2))
    return 0
