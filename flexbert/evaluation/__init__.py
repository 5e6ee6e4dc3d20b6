"""Downstream evaluation of pretrained checkpoints: `flexbert eval` over a run's checkpoints or
published folders (sources.py -> runner.py -> report.py), task lists and the GLUE preset
(tasks.py, glue.py), and the training callback that runs it in a separate process while
pretraining goes on (callback.py)."""

from flexbert.evaluation import cli  # noqa: F401  (registers `flexbert eval`)
