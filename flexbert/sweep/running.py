"""Sweep running: train each unfinished run (in this process or a subprocess), export its
weights as a FlexBERT model folder, and run the fine-tuning stage on it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flexbert.sweep.plan import FINETUNE_DIR, MODEL_DIR, Run, Sweep
from flexbert.sweep.report import is_stale, write_report

REPO = Path(__file__).resolve().parents[2]


def launch_command(sweep: Sweep, run: Run, launcher: str = "composer") -> list[str]:
    return [launcher, "train.py", str(sweep.base), *run.overrides]


def _marker_matches(run: Run) -> bool:
    if not run.done_file.is_file():
        return False
    try:
        return json.loads(run.done_file.read_text()).get("overrides") == run.overrides
    except ValueError:
        return False


def checkpoint_reached_end(sweep: Sweep, run: Run) -> bool:
    """Whether the run's latest checkpoint is already at max_duration (stopped after its last
    save but before the marker): Composer refuses to resume such a run, and nothing is left to
    train. Known for batch and token durations (the checkpoint name holds the batch; metrics.jsonl
    the tokens at that batch); other units resume as usual."""
    from composer.core import Time, TimeUnit

    from flexbert.runtime.metrics_file import read_metrics
    from flexbert.train.recipe.load import load_recipe

    latest = run.folder / "latest-rank0.pt"
    if not latest.is_symlink() or not latest.exists():
        return False
    match = re.search(r"-ba(\d+)-", os.readlink(latest))
    if not match:
        return False
    batch = int(match.group(1))
    recipe = load_recipe(sweep.base, run.overrides)
    end = Time.from_timestring(recipe.cfg.max_duration)
    if end.unit == TimeUnit.BATCH:
        return batch >= end.value
    metrics = run.folder / (recipe.cfg.callbacks.metrics_jsonl or "metrics.jsonl")
    if end.unit == TimeUnit.TOKEN and metrics.is_file():
        row = next((r for r in read_metrics(str(metrics)) if r["step"] == batch), None)
        return row is not None and row["tokens"] >= end.value
    return False


def train_run(sweep: Sweep, run: Run) -> None:
    """Pretrain one run (resuming from its folder's latest checkpoint if there is one)."""
    run.folder.mkdir(parents=True, exist_ok=True)
    if checkpoint_reached_end(sweep, run):
        return
    for path in drop_downstream(run):
        print(f"  removed {path} (made from the previous pretraining)", flush=True)
    if sweep.launcher == "subprocess":
        script = REPO / "train.py"
        cmd = ([sys.executable, str(script)] if script.is_file() else
               [sys.executable, "-c", "import sys; from flexbert.train.main import main; "
                "sys.exit(main(sys.argv[1:]))"])
        proc = subprocess.run([*cmd, str(sweep.base), *run.overrides])
        code = proc.returncode
    else:
        from flexbert.data.streams import release_streaming_memory
        from flexbert.train.main import main

        code = main([str(sweep.base), *run.overrides])
        release_streaming_memory()  # else every run's datasets keep their descriptors open
    if code != 0:
        raise RuntimeError(f"sweep run {run.name} failed with status {code}")


def checkpoint_model_state(checkpoint: Path) -> dict:
    """The model weights of a Composer checkpoint: the one place the sweep opens a checkpoint."""
    from flexbert.io.checkpoint_reader import load_checkpoint_state

    return load_checkpoint_state(checkpoint)["model"]


def drop_downstream(run: Run) -> list[Path]:
    """A run about to (re)train makes its exported model and fine-tuning results stale: remove
    them so no report shows old scores beside new pretraining."""
    import shutil

    gone = [p for p in (run.folder / MODEL_DIR, run.folder / FINETUNE_DIR) if p.exists()]
    for path in gone:
        shutil.rmtree(path)
    return gone


def export_model(sweep: Sweep, run: Run) -> Path:
    """The run's final weights as a FlexBERT model dir (any config, unlike the HF export) plus
    the tokenizer: what the fine-tuning stage starts from."""
    import shutil

    from flexbert.io.hf import save_flexbert
    from flexbert.model import FlexBertForMaskedLM
    from flexbert.train.checkpointing.saver import local_save_folder
    from flexbert.train.recipe.load import load_recipe

    recipe = load_recipe(sweep.base, run.overrides)
    folder = Path(local_save_folder(recipe.cfg.save_folder))
    checkpoint = folder / "latest-rank0.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: run {run.name} left no checkpoint to export")
    state = checkpoint_model_state(checkpoint)
    model = FlexBertForMaskedLM(recipe.model)
    result = model.load_state_dict({k[len("model."):]: v for k, v in state.items()
                                    if k.startswith("model.")}, strict=False)
    missing = [k for k in result.missing_keys if "inv_freq" not in k and k != "decoder.weight"]
    if missing or result.unexpected_keys:
        raise ValueError(f"{checkpoint}: weights do not match run {run.name}'s model; missing "
                         f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    model.tie_weights()
    out = save_flexbert(model, run.folder / MODEL_DIR)
    tokenizer = recipe.cfg.export.tokenizer or os.path.join(recipe.cfg.data_dir, "tokenizer")
    if os.path.isdir(tokenizer):
        for item in Path(tokenizer).iterdir():
            if item.is_file():
                shutil.copy2(item, out / item.name)
    return out


def finetune_run(sweep: Sweep, run: Run, task: Any) -> dict:
    """One downstream task on one run's model; cached in finetune/<task>/results.json."""
    import dataclasses

    from flexbert.finetune import finetune, task_name

    folder = run.folder / FINETUNE_DIR / task_name(task)
    result_file = folder / "results.json"
    if result_file.is_file() and not is_stale(result_file, run):
        return json.loads(result_file.read_text())
    model_dir = run.folder / MODEL_DIR
    if not (model_dir / "model.safetensors").is_file():
        export_model(sweep, run)
    cfg = dataclasses.replace(task, model=str(model_dir), save_folder=str(folder))
    return finetune(cfg)


def run_sweep(sweep: Sweep, print_fn=print) -> dict[str, Any]:
    """Train every unfinished run, fine-tune if asked, then write the report. Returns counts and
    the report rows."""
    trained, skipped = [], []
    sweep.out.mkdir(parents=True, exist_ok=True)
    for run in sweep.runs:
        if _marker_matches(run):
            skipped.append(run.name)
            print_fn(f"[{run.index + 1}/{len(sweep.runs)}] {run.name}: finished, skipped")
            continue
        if checkpoint_reached_end(sweep, run):  # stopped after its last save, before the marker
            print_fn(f"[{run.index + 1}/{len(sweep.runs)}] {run.name}: finished (its last "
                     "checkpoint is at max_duration), exporting and marking it")
            export_model(sweep, run)
            # no "seconds": this launch did not time the training, so the report shows no wall_s
            run.done_file.write_text(json.dumps({"overrides": run.overrides}, indent=2) + "\n")
            skipped.append(run.name)
            continue
        print_fn(f"[{run.index + 1}/{len(sweep.runs)}] {run.name}: training "
                 f"({' '.join(run.own) or 'base recipe'})")
        start = time.time()
        train_run(sweep, run)
        export_model(sweep, run)  # <run>/model: what `flexbert finetune --model` starts from
        run.done_file.write_text(json.dumps({"overrides": run.overrides, "seconds":
                                             round(time.time() - start, 2)}, indent=2) + "\n")
        trained.append(run.name)
    finetuned = 0
    for run in sweep.runs:
        for task in sweep.finetune:
            from flexbert.finetune import task_name

            result = run.folder / FINETUNE_DIR / task_name(task) / "results.json"
            if not result.is_file() or is_stale(result, run):
                print_fn(f"{run.name}: fine-tuning on {task_name(task)}")
                finetuned += 1
            finetune_run(sweep, run, task)
    rows = write_report(sweep)
    print_fn(f"sweep {sweep.name}: {len(trained)} trained, {len(skipped)} already finished, "
             f"{finetuned} fine-tuned; report in {sweep.out}")
    return {"trained": trained, "skipped": skipped, "finetuned": finetuned, "rows": rows}
