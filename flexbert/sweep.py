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
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from flexbert.cli import command
from flexbert.config import ConfigError

log = logging.getLogger(__name__)

DONE_FILE = "sweep_done.json"
MODEL_DIR = "model"          # FlexBERT model dir written per run (flexbert.yaml + weights + tokenizer)
SWEEP_KEYS = ("name", "base", "overrides", "grid", "runs", "out", "launcher", "finetune")
MANAGED_KEYS = ("run_name", "save_folder", "autoresume")
REPO = Path(__file__).resolve().parents[1]


class SweepError(ConfigError):
    """A sweep file or one of its combinations is wrong; nothing has run."""


@dataclass
class Run:
    index: int
    name: str                   # stable slug, also the folder name
    own: list[str]              # this run's own overrides (grid/list), k=v
    overrides: list[str]        # everything passed to train.py, sweep-managed keys last
    folder: Path

    @property
    def done_file(self) -> Path:
        return self.folder / DONE_FILE


@dataclass
class Sweep:
    name: str
    source: Path
    base: Path
    runs: list[Run]
    out: Path
    launcher: str = "inprocess"
    finetune: list[Any] = field(default_factory=list)   # FinetuneConfig per task


# --- loading and validation ---------------------------------------------------------------------

def format_value(value: Any) -> str:
    """A YAML value as OmegaConf's dotlist parser reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _as_overrides(value: Any, where: str) -> list[str]:
    """A mapping {key: value} or a list of "key=value" strings -> ["key=value", ...]."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [f"{k}={format_value(v)}" for k, v in value.items()]
    if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
        return list(value)
    raise SweepError(f"{where}: expected a mapping of dotted keys to values or a list of "
                     f"'key=value' strings, got {value!r}")


def run_slug(own: Sequence[str]) -> str:
    """A stable folder/run name from a run's own overrides."""
    if not own:
        return "base"
    parts = []
    for item in own:
        key, _, value = item.partition("=")
        key = key.removeprefix("model.")
        parts.append(f"{key}-{value}")
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "-", "_".join(parts))
    slug = re.sub(r"-{2,}", "-", slug).strip("-") or "run"
    if len(slug) > 80:
        digest = hashlib.sha1("|".join(own).encode()).hexdigest()[:8]
        slug = f"{slug[:71]}-{digest}"
    return slug


def _combinations(spec: dict, source: Path) -> list[list[str]]:
    grid, runs = spec.get("grid"), spec.get("runs")
    if grid is not None and runs is not None:
        raise SweepError(f"{source}: give either grid or runs, not both")
    if grid is not None:
        if not isinstance(grid, dict) or not grid:
            raise SweepError(f"{source}: grid: expected a mapping of dotted keys to lists of values")
        axes = []
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise SweepError(f"{source}: grid.{key}: expected a non-empty list of values")
            axes.append([f"{key}={format_value(v)}" for v in values])
        return [list(combo) for combo in itertools.product(*axes)]
    if runs is not None:
        if not isinstance(runs, list) or not runs:
            raise SweepError(f"{source}: runs: expected a non-empty list of override sets")
        return [_as_overrides(r, f"{source}: runs[{i}]") for i, r in enumerate(runs)]
    return [[]]


def load_sweep(path: str | Path, out: Optional[str] = None) -> Sweep:
    """Read a sweep file and validate every combination (recipe, overrides, fine-tuning stage)
    through the same loader train.py uses; raise SweepError naming the run and the key."""
    from omegaconf import OmegaConf

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: sweep file not found")
    spec = OmegaConf.to_container(OmegaConf.load(source), resolve=True)
    if not isinstance(spec, dict):
        raise SweepError(f"{source}: expected a mapping at the top level")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{source}: {unknown[0]}: unknown sweep key; allowed keys: "
                         f"{', '.join(SWEEP_KEYS)}")
    if "base" not in spec:
        raise SweepError(f"{source}: base: required (the recipe every run starts from)")
    base = Path(spec["base"])
    if not base.is_absolute():
        base = Path(os.path.normpath(source.parent / base))
    name = str(spec.get("name") or source.stem)
    out_dir = Path(out or str(spec.get("out") or "runs/sweeps/{name}").replace("{name}", name))
    launcher = spec.get("launcher", "inprocess")
    if launcher not in ("inprocess", "subprocess"):
        raise SweepError(f"{source}: launcher: {launcher!r}; allowed: inprocess, subprocess")
    common = _as_overrides(spec.get("overrides"), f"{source}: overrides")
    for item in common:
        if item.partition("=")[0] in MANAGED_KEYS:
            raise SweepError(f"{source}: overrides: {item.partition('=')[0]} is set by the sweep "
                             "per run")

    runs: list[Run] = []
    combos = _combinations(spec, source)
    for i, own in enumerate(combos):
        slug = run_slug(own)
        if any(r.name == slug for r in runs):
            raise SweepError(f"{source}: run {i + 1} ({', '.join(own)}) repeats run {slug!r}")
        folder = out_dir / slug
        overrides = [*common, *own, f"run_name={slug}", f"save_folder={folder}", "autoresume=true"]
        runs.append(Run(i, slug, own, overrides, folder))

    from flexbert.train.config import load_recipe

    from flexbert.hf import check_expressible

    for run in runs:
        label = ", ".join(run.own) or "base"
        where = f"sweep {source}: run {run.index + 1}/{len(runs)} [{label}] (folder {run.name})"
        try:
            recipe = load_recipe(base, run.overrides)
        except (ConfigError, ValueError) as err:
            raise SweepError(f"{where}: {err}") from None
        if recipe.cfg.export.hf_folder:  # train.py would train, then fail to export
            try:
                check_expressible(recipe.model)
            except ValueError as err:
                raise SweepError(f"{where}: export.hf_folder: {err}; set export.hf_folder: null "
                                 "in the sweep's overrides (the sweep exports a FlexBERT model "
                                 "dir itself)") from None
    finetune = _finetune_stage(spec.get("finetune"), source)
    return Sweep(name, source, base, runs, out_dir, launcher, finetune)


def _finetune_stage(value: Any, source: Path) -> list[Any]:
    if value is None:
        return []
    from flexbert.config import structured
    from flexbert.finetune import FinetuneConfig

    tasks = value if isinstance(value, list) else [value]
    configs = []
    for i, task in enumerate(tasks):
        where = f"finetune[{i}]" if isinstance(value, list) else "finetune"
        if not isinstance(task, dict) or not task.get("task"):
            raise SweepError(f"{source}: {where}.task: required")
        if "model" in task or "save_folder" in task:
            raise SweepError(f"{source}: {where}: model and save_folder are set per run by the sweep")
        from omegaconf import OmegaConf

        try:
            configs.append(OmegaConf.to_object(structured(FinetuneConfig, task, str(source), where)))
        except ConfigError as err:
            raise SweepError(str(err)) from None
    return configs


# --- running ------------------------------------------------------------------------------------

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

    from flexbert.train.callbacks import read_metrics
    from flexbert.train.config import load_recipe

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


def export_model(sweep: Sweep, run: Run) -> Path:
    """The run's final weights as a FlexBERT model dir (any config, unlike the HF export) plus
    the tokenizer: what the fine-tuning stage starts from."""
    import shutil

    import torch

    from flexbert.hf import save_flexbert
    from flexbert.model import FlexBertForMaskedLM
    from flexbert.train.builder import local_save_folder
    from flexbert.train.config import load_recipe

    recipe = load_recipe(sweep.base, run.overrides)
    folder = Path(local_save_folder(recipe.cfg.save_folder))
    checkpoint = folder / "latest-rank0.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: run {run.name} left no checkpoint to export")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["model"]
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

    folder = run.folder / "finetune" / task_name(task)
    result_file = folder / "results.json"
    if result_file.is_file():
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
        print_fn(f"[{run.index + 1}/{len(sweep.runs)}] {run.name}: training "
                 f"({' '.join(run.own) or 'base recipe'})")
        start = time.time()
        train_run(sweep, run)
        if sweep.finetune:
            export_model(sweep, run)
        run.done_file.write_text(json.dumps({"overrides": run.overrides, "seconds":
                                             round(time.time() - start, 2)}, indent=2) + "\n")
        trained.append(run.name)
    finetuned = 0
    for run in sweep.runs:
        for task in sweep.finetune:
            from flexbert.finetune import task_name

            if not (run.folder / "finetune" / task_name(task) / "results.json").is_file():
                print_fn(f"{run.name}: fine-tuning on {task_name(task)}")
                finetuned += 1
            finetune_run(sweep, run, task)
    rows = write_report(sweep)
    print_fn(f"sweep {sweep.name}: {len(trained)} trained, {len(skipped)} skipped, "
             f"{finetuned} fine-tuned; report in {sweep.out}")
    return {"trained": trained, "skipped": skipped, "finetuned": finetuned, "rows": rows}


# --- report -------------------------------------------------------------------------------------

def count_parameters(model_cfg: Any) -> int:
    """Parameters of the MLM model, counted on the meta device (nothing allocated)."""
    import torch

    from flexbert.model import FlexBertForMaskedLM

    with torch.device("meta"):
        return FlexBertForMaskedLM(model_cfg).num_parameters()


def summarize_run(sweep: Sweep, run: Run) -> dict[str, Any]:
    """Final figures of one run from its metrics.jsonl (and fine-tuning results)."""
    from flexbert.train.callbacks import read_metrics
    from flexbert.train.config import load_recipe

    recipe = load_recipe(sweep.base, run.overrides)
    metrics_file = run.folder / (recipe.cfg.callbacks.metrics_jsonl or "metrics.jsonl")
    rows = read_metrics(str(metrics_file)) if metrics_file.is_file() else []
    evals = [r for r in rows if "metrics/eval/MaskedLoss" in r]
    # Throughput: the mean over the second half of the run (the sliding window has filled and
    # start-up steps are excluded).
    speeds = [r["throughput/tokens_per_sec"] for r in rows[len(rows) // 2:]
              if "throughput/tokens_per_sec" in r]
    done = json.loads(run.done_file.read_text()) if run.done_file.is_file() else {}
    summary = {
        "run": run.name,
        "overrides": " ".join(run.own),
        "steps": rows[-1]["step"] if rows else 0,
        "tokens": rows[-1]["tokens"] if rows else 0,
        "params": count_parameters(recipe.model),
        "eval_loss": evals[-1]["metrics/eval/MaskedLoss"] if evals else math.nan,
        "eval_masked_acc": evals[-1].get("metrics/eval/MaskedAccuracy", math.nan) if evals else math.nan,
        "train_loss": (sum(r["loss"] for r in rows[-5:]) / len(rows[-5:])) if rows else math.nan,
        "tokens_per_sec": sum(speeds) / len(speeds) if speeds else math.nan,
        "wall_s": done.get("seconds", math.nan),
    }
    for task in sweep.finetune:
        from flexbert.finetune import task_name

        result_file = run.folder / "finetune" / task_name(task) / "results.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        for key in ("accuracy", "f1", "matthews", "pearson", "spearman"):
            if key in result:
                summary[f"{task_name(task)}/{key}"] = result[key]
    summary["_curve"] = [(r["tokens"], r["metrics/eval/MaskedLoss"]) for r in evals]
    summary["_train_curve"] = [(r["tokens"], r["loss"]) for r in rows]
    return summary


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_report(sweep: Sweep) -> list[dict[str, Any]]:
    """results.csv, results.md and results.png (eval MLM loss over tokens) in the sweep folder."""
    summaries = [summarize_run(sweep, run) for run in sweep.runs]
    columns = [k for k in summaries[0] if not k.startswith("_")]
    for s in summaries[1:]:
        columns += [k for k in s if not k.startswith("_") and k not in columns]
    with open(sweep.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for s in summaries:
            writer.writerow({k: s.get(k, "") for k in columns})
    best = min((s for s in summaries if not math.isnan(s["eval_loss"])),
               key=lambda s: s["eval_loss"], default=None)
    lines = [f"# Sweep `{sweep.name}`", "",
             f"Base `{sweep.base}`; {len(summaries)} runs; figures are the last evaluation "
             "(eval loss, masked accuracy at 15 % masking), the mean of the last 5 train losses, "
             "and tokens/s over the second half of each run.", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for s in summaries:
        cells = [f"{s[k]:.1f}" if k.endswith("_s") and isinstance(s.get(k), float)
                 else _fmt(s.get(k, "")) for k in columns]
        if s is best:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![eval MLM loss over tokens](results.png)", ""]
    (sweep.out / "results.md").write_text("\n".join(lines))
    plot(summaries, sweep.out / "results.png", sweep.name)
    return [{k: v for k, v in s.items() if not k.startswith("_")} for s in summaries]


def plot(summaries: list[dict], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_eval, ax_train) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in summaries:
        if s["_curve"]:
            xs, ys = zip(*s["_curve"])
            ax_eval.plot(xs, ys, marker="o", markersize=3, label=s["run"])
        if s["_train_curve"]:
            xs, ys = zip(*s["_train_curve"])
            k = max(1, len(ys) // 20)  # light smoothing: moving average over ~5 % of the run
            smooth = [sum(ys[max(0, i - k + 1):i + 1]) / len(ys[max(0, i - k + 1):i + 1])
                      for i in range(len(ys))]
            ax_train.plot(xs, smooth, label=s["run"])
    ax_eval.set(title=f"{title}: eval MLM loss", xlabel="tokens", ylabel="masked-token loss (15 %)")
    ax_train.set(title="train MLM loss (moving average)", xlabel="tokens", ylabel="loss (30 %)")
    for ax in (ax_eval, ax_train):
        ax.grid(alpha=0.3)
    ax_eval.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# --- CLI ----------------------------------------------------------------------------------------

def _add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep YAML (base recipe + grid or list of overrides)")
    parser.add_argument("--print-commands", action="store_true",
                        help="print the `composer train.py ...` line per run and exit")
    parser.add_argument("--out", help="sweep folder (default: the file's `out`, or runs/sweeps/NAME)")
    parser.add_argument("--launcher", choices=["inprocess", "subprocess"],
                        help="override the file's launcher")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite results.csv/.md/.png from the runs' metrics; train nothing")


@command("sweep", "run a grid of config overrides and compare the runs", _add_args)
def sweep_command(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep, args.out)
    if args.launcher:
        sweep.launcher = args.launcher
    if args.print_commands:
        for run in sweep.runs:
            print(shlex.join(launch_command(sweep, run)))
        return 0
    if args.report_only:
        write_report(sweep)
        print(f"report in {sweep.out}")
        return 0
    # Warnings only from the libraries (train.py's own basicConfig is then a no-op); the sweep
    # prints its progress itself.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    run_sweep(sweep)
    print((sweep.out / "results.md").read_text())
    return 0
