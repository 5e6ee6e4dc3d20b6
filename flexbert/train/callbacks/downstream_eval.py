"""`callbacks.downstream_eval`: while pretraining, the weights are saved as a snapshot every
`every` (and at the end; under FSDP every rank gathers, rank 0 writes), and a separate
`flexbert eval` process fine-tunes and evaluates it, so training never waits for it. Finished
results go to metrics.jsonl as a row at the snapshot's step and tokens
(`downstream/<task>/<metric>` mean and `..._std` over seeds) and to the other loggers. A failed
evaluation is a warning, never an error of the run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from composer.core import Callback, State, Time
from composer.loggers import Logger
from composer.utils import dist

log = logging.getLogger(__name__)
# Launcher variables a child must not inherit, or its Trainer would join the training's group.
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
             "MASTER_PORT", "GROUP_RANK", "TORCHELASTIC_RUN_ID")


@dataclass
class Pending:
    step: int
    tokens: int
    folder: Path
    launched: float
    process: Optional[subprocess.Popen] = None


class DownstreamEval(Callback):
    def __init__(self, folder: str, tasks: Sequence[str], seeds: Sequence[int],
                 every: Optional[str], at_end: bool, options: dict[str, Any],
                 device: str = "cpu", wait_at_end: float = 600.0, max_parallel: int = 1):
        from flexbert.evaluation.tasks import parse_tasks

        self.folder, self.tasks, self.seeds = Path(folder), list(tasks), list(seeds)
        self.eval_tasks = parse_tasks(self.tasks)   # bad task files fail before training starts
        self.every = Time.from_timestring(every) if every else None
        self.at_end, self.options, self.device = at_end, dict(options), device
        self.wait_at_end, self.max_parallel = wait_at_end, max(1, max_parallel)
        self.pending: list[Pending] = []
        self.done: list[Pending] = []
        self._next: Optional[float] = None
        self._last_step: Optional[int] = None
        self._step = 0                  # the training step results are logged at (not metrics.jsonl)
        self._waited = False

    # --- when ---------------------------------------------------------------------------------

    def fit_start(self, state: State, logger: Logger) -> None:
        if self.every is not None:
            elapsed = float(state.timestamp.get(self.every.unit).value)
            self._next = (elapsed // self.every.value + 1) * self.every.value
        if dist.get_global_rank() == 0:
            self._adopt(int(state.timestamp.batch), logger)

    def _adopt(self, resumed_at: int, logger: Logger) -> None:
        """A resumed run takes over the evaluations an earlier launch started but never
        recorded (killed before its results came back): every snapshot up to the resumed step
        without a downstream row in metrics.jsonl is evaluated again; `flexbert eval` keeps the
        runs already in its results.jsonl and does only the missing ones."""
        if resumed_at == 0 or not self.folder.is_dir():
            return
        recorded = _recorded_steps(logger)
        for meta in sorted(self.folder.glob("step*/snapshot.json")):
            try:
                info = json.loads(meta.read_text())
                step, tokens = int(info["step"]), int(info["tokens"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if step > resumed_at or step in recorded or any(p.step == step for p in self.pending):
                continue  # later snapshots are taken again as the run gets there
            log.info("downstream eval: adopting step %d from an earlier launch (finished runs "
                     "kept, missing ones redone)", step)
            self.pending.append(Pending(step, tokens, meta.parent, time.time()))
        self._launch_queued()

    def batch_end(self, state: State, logger: Logger) -> None:
        # Every rank decides alike (the clock is the same everywhere): under FSDP the snapshot's
        # weights are gathered by all ranks together.
        step = int(state.timestamp.batch)
        final = self.at_end and float(state.get_elapsed_duration() or 0) >= 1.0
        due = False
        if self.every is not None and float(state.timestamp.get(self.every.unit).value) >= self._next:
            while self._next <= float(state.timestamp.get(self.every.unit).value):
                self._next += self.every.value
            due = True
        if due or (final and self._last_step != step):
            self._snapshot(state)
        if dist.get_global_rank() != 0:
            return
        self._step = step
        if final:  # the last row of metrics.jsonl is written after this event: wait for them here
            self._wait(logger, self.wait_at_end)
            self._waited = True
        self._poll(logger)

    def fit_end(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() == 0 and self.pending:
            if not self._waited:
                self._wait(logger, self.wait_at_end)
            for p in self.pending:
                if p.process is not None and p.process.poll() is None:
                    log.warning("downstream eval of step %d still running after %.0fs; stopped "
                                "(rerun: flexbert eval %s)", p.step, self.wait_at_end, p.folder / "model")
                    p.process.terminate()

    # --- what -----------------------------------------------------------------------------------

    def _snapshot(self, state: State) -> None:
        """Every rank helps gather the weights (flexbert.runtime.distributed.export_model, the Publish
        callback's path); rank 0 writes them as a published folder and starts (or queues) its
        evaluation; the others wait at a barrier until the folder is written."""
        from flexbert.runtime.distributed import export_model

        self._last_step = step = int(state.timestamp.batch)
        model = export_model(state)  # a collective under FSDP; None on ranks other than 0
        if model is not None:
            self._write(state, model, step)
        dist.barrier()

    def _write(self, state: State, model: Any, step: int) -> None:
        from flexbert.io.publish import publish_model
        from flexbert.train.callbacks.publish import PhaseInfo

        info_cb = next((c for c in state.callbacks if isinstance(c, PhaseInfo)), None)
        info = info_cb.current(state) if info_cb else {"step": step, "tokens": int(state.timestamp.token)}
        folder = self.folder / f"step{step}"
        was_training = model.training
        try:
            publish_model(model.eval(), folder / "model", info, _tokenizer(info))
        except Exception as err:  # a full disk or a bad tokenizer must not stop training
            log.warning("downstream eval: could not save the step %d snapshot: %s", step, err)
            return
        finally:
            model.train(was_training)
        # metrics.jsonl counts this phase's tokens (results.jsonl has all phases')
        tokens = int(state.timestamp.token)
        (folder / "snapshot.json").write_text(json.dumps({"step": step, "tokens": tokens}) + "\n")
        self.pending.append(Pending(step, tokens, folder, time.time()))
        self._launch_queued()

    def _launch_queued(self) -> None:
        running = sum(1 for p in self.pending if p.process is not None and p.process.poll() is None)
        for p in self.pending:
            if p.process is None and running < self.max_parallel:
                p.process = self._start(p)
                p.launched = time.time()
                running += 1

    def command(self, p: Pending) -> list[str]:
        args = [sys.executable, "-m", "flexbert.cli", "eval", str(p.folder / "model"),
                "--tasks", *self.tasks, "--seeds", ",".join(str(s) for s in self.seeds),
                "--out", str(p.folder), "--device", self.device]
        for key, value in self.options.items():
            args += ["--" + key.replace("_", "-"), str(value)]
        return args

    def _start(self, p: Pending) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
        root = str(Path(__file__).resolve().parents[2])  # this checkout's flexbert, in the child too
        env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH")) if x)
        if self.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""  # keep the child off the training GPU
        out = open(p.folder / "eval.log", "w")
        try:
            return subprocess.Popen(self.command(p), stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            out.close()

    # --- results ---------------------------------------------------------------------------------

    def _poll(self, logger: Logger) -> None:
        for p in [p for p in self.pending if p.process is not None and p.process.poll() is not None]:
            self.pending.remove(p)
            self.done.append(p)
            self._record(p, logger)
        self._launch_queued()

    def _wait(self, logger: Logger, timeout: float) -> None:
        deadline = time.time() + timeout
        while self.pending and time.time() < deadline:
            self._poll(logger)
            time.sleep(0.2)

    def _record(self, p: Pending, logger: Logger) -> None:
        from flexbert.evaluation.report import summarize
        from flexbert.evaluation.runner import read_results

        if p.process.returncode != 0:
            log.warning("downstream eval of step %d failed (exit %s); see %s", p.step,
                        p.process.returncode, p.folder / "eval.log")
            return
        rows = read_results(p.folder)
        metrics: dict[str, float] = {}
        for r in summarize(rows, self.eval_tasks):
            metrics[f"downstream/{r['task']}/{r['metric']}"] = r["mean"]
            metrics[f"downstream/{r['task']}/{r['metric']}_std"] = r["std"]
        metrics["downstream/launched_at"] = p.launched
        metrics["downstream/finished_at"] = max((r["finished"] for r in rows), default=time.time())
        _append_row(logger, {"step": p.step, "tokens": p.tokens, **metrics})
        others = {**metrics, "downstream/step": p.step, "downstream/tokens": p.tokens}
        for destination in logger.destinations:
            if not _is_metrics_jsonl(destination):
                destination.log_metrics(others, step=self._step)

    def state_dict(self) -> dict:
        """What was pending at this checkpoint (for the record; a resumed run adopts from the
        snapshot folders and metrics.jsonl, which also cover snapshots taken after it)."""
        return {"pending": [{"step": p.step, "tokens": p.tokens, "folder": str(p.folder)}
                            for p in self.pending]}

    def load_state_dict(self, state: dict) -> None:
        self.restored_pending = list((state or {}).get("pending") or [])


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the training process dies (even by SIGKILL),
    so no evaluation outlives its run unnoticed (Linux; elsewhere fit_end's terminate only)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _recorded_steps(logger: Logger) -> set[int]:
    """Steps whose downstream row is already in metrics.jsonl."""
    steps: set[int] = set()
    for destination in logger.destinations:
        if _is_metrics_jsonl(destination) and os.path.isfile(destination.path):
            with open(destination.path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if "downstream/launched_at" in row:
                        steps.add(int(row["step"]))
    return steps


def _tokenizer(info: dict) -> Any:
    from flexbert.io.publish import existing_dir, load_tokenizer

    return load_tokenizer(existing_dir(info.get("tokenizer")))


def _is_metrics_jsonl(destination: Any) -> bool:
    from flexbert.runtime.metrics_file import MetricsJSONL

    return isinstance(destination, MetricsJSONL)


def _append_row(logger: Logger, row: dict) -> None:
    """A metrics.jsonl row at the snapshot's step (read_metrics merges it into that step's
    training row), so the scores sit at the tokens the weights had seen."""
    for destination in logger.destinations:
        if _is_metrics_jsonl(destination):
            with open(destination.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def check_downstream_config(cfg: Any, source: str) -> None:
    """Recipe-load-time checks of callbacks.downstream_eval (ConfigError naming the key)."""
    from flexbert.config import ConfigError
    from flexbert.evaluation.cli import RUN_OPTIONS
    from flexbert.evaluation.tasks import parse_tasks

    d = cfg.callbacks.downstream_eval
    if not d.enabled:
        return
    where = f"{source}: callbacks.downstream_eval"
    if not cfg.save_folder:
        raise ConfigError(f"{where}.enabled: needs save_folder (snapshots and results go under it)")
    if not d.tasks:
        raise ConfigError(f"{where}.tasks: give at least one task (a folder, files or a GLUE name)")
    unknown = sorted(set(d.options) - set(RUN_OPTIONS))
    if unknown:
        raise ConfigError(f"{where}.options: unknown {unknown}; allowed: {', '.join(RUN_OPTIONS)}")
    if d.every:
        try:
            Time.from_timestring(str(d.every))
        except ValueError:
            raise ConfigError(f"{where}.every: {d.every!r} is not a time string such as "
                              "'1000000tok' or '100ba'") from None
    if d.device not in ("cpu", "gpu"):
        raise ConfigError(f"{where}.device: {d.device!r}; allowed: cpu, gpu")
    try:
        parse_tasks(d.tasks)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"{where}.tasks: {err}") from None


def build_downstream_eval(cfg: Any) -> list:
    """The callback for a recipe whose callbacks.downstream_eval is enabled (checked at load by
    check_downstream_config; every rank takes part in snapshots, rank 0 runs the evaluations)."""
    from flexbert.train.checkpointing.saver import local_save_folder

    d = cfg.callbacks.downstream_eval
    if not d.enabled:
        return []
    every = d.every or (cfg.save_interval if d.at_checkpoint else None)
    folder = d.folder if os.path.isabs(d.folder) else os.path.join(local_save_folder(cfg.save_folder), d.folder)
    return [DownstreamEval(folder, d.tasks, d.seeds, every, d.at_end, d.options, d.device,
                           d.wait_at_end, d.max_parallel)]
