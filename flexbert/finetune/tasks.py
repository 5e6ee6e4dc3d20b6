"""The GLUE tasks as fine-tuning knows them: dataset, text fields, label count, main metric."""

from __future__ import annotations

from dataclasses import dataclass


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
