"""Fine-tuning runs: the Composer Trainer for classification and token classification, the
sentence-transformers path for retrieval, and results.json."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


from flexbert.config import ConfigError
from flexbert.finetune.config import FinetuneConfig, task_name
from flexbert.finetune.fitting import fit_and_evaluate, pad_id, quiet


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune and evaluate; returns (and writes to save_folder/results.json) the final eval
    metrics under their short names (accuracy, f1, matthews / pearson, spearman, mse /
    entity_f1 ... / ndcg@10, mrr@10)."""
    from flexbert.finetune.data import task_kind

    if not cfg.model:
        raise ConfigError("finetune.model: required (checkpoint, FlexBERT dir or HF folder)")
    start = time.time()
    kind = task_kind(cfg)
    runner = {"classification": run_classification, "token_classification": _run_tokens,
              "retrieval": _run_retrieval}[kind]
    result = {"task": task_name(cfg), "kind": kind, "model": str(cfg.model), "seed": cfg.seed,
              **runner(cfg)}
    result["seconds"] = round(time.time() - start, 2)
    if cfg.save_folder:
        os.makedirs(cfg.save_folder, exist_ok=True)
        Path(cfg.save_folder, "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _run_tokens(cfg: FinetuneConfig) -> dict[str, Any]:
    from flexbert.finetune.token_classification import run_token_classification

    return run_token_classification(cfg)


def _run_retrieval(cfg: FinetuneConfig) -> dict[str, Any]:
    from flexbert.finetune.retrieval import run_retrieval

    return run_retrieval(cfg)


def run_classification(cfg: FinetuneConfig) -> dict[str, Any]:
    from flexbert.finetune.data import collate, load_task, tokenize
    from flexbert.finetune.loading import load_tokenizer
    from flexbert.finetune.model import ComposerFlexBertClassifier, classification_model

    quiet(cfg)
    task = load_task(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer)
    model = classification_model(cfg, task.num_labels, task.problem_type)
    train_ds = tokenize(task.train, tokenizer, task, cfg.max_seq_len)
    eval_ds = tokenize(task.eval, tokenizer, task, cfg.max_seq_len)
    collate_fn = collate(pad_id(tokenizer, model), task.problem_type == "regression")
    values, fit = fit_and_evaluate(cfg, ComposerFlexBertClassifier(model), train_ds, eval_ds,
                                   collate_fn)
    return {"problem_type": task.problem_type, "num_labels": task.num_labels,
            "train_examples": len(train_ds), "eval_examples": len(eval_ds), **fit, **values}


