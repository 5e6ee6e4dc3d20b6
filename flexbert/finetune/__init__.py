"""Downstream fine-tuning of a pretrained FlexBERT: sequence classification and token
classification through Composer, single-vector retrieval through sentence-transformers.

    flexbert finetune --model runs/flexbert-tiny/hf --task sst2
    flexbert finetune --model runs/t/latest-rank0.pt --task tasks/sentiment      (train.* + dev.*)
    flexbert finetune --model runs/t/hf --task tasks/ner --kind token_classification
    flexbert finetune --model runs/t/hf --task tasks/beir-sample                 (corpus.jsonl ...)

Where things live: config.py (FinetuneConfig, task names), files.py (reading task files, errors
with file and line), data.py (classification data, task kinds), token_classification.py,
retrieval.py, loading.py (model sources and tokenizers), model.py (Composer classifier and
metrics), training.py (the runs), cli.py (the command).
"""

from flexbert.finetune import cli  # noqa: F401  (registers `flexbert finetune`)
from flexbert.finetune.config import FinetuneConfig, task_name
from flexbert.finetune.tasks import GLUE_TASKS
from flexbert.finetune.data import TaskData, load_task, task_kind
from flexbert.finetune.loading import load_encoder, load_tokenizer, read_pretrained
from flexbert.finetune.training import finetune

__all__ = ["FinetuneConfig", "GLUE_TASKS", "TaskData", "finetune", "load_encoder", "load_task",
           "load_tokenizer", "read_pretrained", "task_kind", "task_name"]
