"""Ablation sweeps: one YAML names a base recipe and a grid (or list) of overrides; every run is
validated first, then trained one after another, and the runs are compared in a table and a plot.

    flexbert sweep configs/ablations/glu_vs_mlp.yaml                    # run, then report
    flexbert sweep configs/ablations/glu_vs_mlp.yaml --print-commands   # launch lines only

A sweep file:

    name: glu-vs-mlp
    base: ../tiny.yaml                     # relative to the sweep file
    overrides:                             # every run (dotted keys, as on the train.py line)
      max_duration: 30ba
    grid:                                  # cartesian product ...
      model.mlp.type: [mlp, glu]
      model.norm.type: [layernorm, rmsnorm]
    # runs:                                # ... or an explicit list of override sets
    #   - {model.padding: padded}
    #   - {model.padding: unpadded}
    out: runs/sweeps/{name}                # default; --out wins
    launcher: inprocess                    # or subprocess (`python train.py ...` per run)
    finetune:                              # optional: a downstream stage per run (flexbert finetune keys)
      task: sst2
      epochs: 1

Run folders are named from the run's own overrides (`model.` dropped): `mlp.type=glu`,
`norm.type=rmsnorm` -> `mlp.type-glu_norm.type-rmsnorm`. A finished run leaves `sweep_done.json`
and is skipped next time; an interrupted one resumes from its checkpoints (`autoresume=true`).
Extra `key=value` arguments after the file override every run (`flexbert sweep FILE
max_duration=20ba`); a run that retrains drops its old exported model and fine-tuning results.

The package splits by job: plan.py (file -> validated runs), running.py (train, export,
fine-tune), report.py (results.csv/.md/.png), cli.py (the `flexbert sweep` command).
"""

from flexbert.sweep import cli  # noqa: F401  (registers `flexbert sweep`)
from flexbert.sweep.plan import (DONE_FILE, MODEL_DIR, Run, Sweep, SweepError, format_value,
                                 load_sweep, run_slug)
from flexbert.sweep.report import summarize_run, write_report
from flexbert.sweep.running import (checkpoint_reached_end, export_model, finetune_run,
                                    launch_command, run_sweep, train_run)

__all__ = ["DONE_FILE", "MODEL_DIR", "Run", "Sweep", "SweepError", "checkpoint_reached_end",
           "export_model", "finetune_run", "format_value", "launch_command", "load_sweep",
           "run_slug", "run_sweep", "summarize_run", "train_run", "write_report"]
