"""Training callbacks that carry a run's identity into its checkpoints (PhaseInfo) and publish
Hugging Face folders while training (Publish); the writing itself is flexbert.io.publish."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from composer.core import Callback, State, Time
from composer.loggers import Logger
from composer.utils import dist

from flexbert.config import ModelConfig, to_yaml
from flexbert.io.hub import BackgroundUploads
from flexbert.io.publish import existing_dir, format_revision, load_tokenizer, publish_model
from flexbert.runtime.distributed import export_model


class PhaseInfo(Callback):
    """Saved in every checkpoint (state["callbacks"]["PhaseInfo"]).

    On a plain resume the loaded history is kept; when a new phase loads the previous phase's
    checkpoint (another phase name), that phase's step and tokens are appended to the history,
    so a model card can give tokens seen over all phases.
    """

    def __init__(self, model_cfg: ModelConfig, phase: str, run_name: str, max_seq_len: int,
                 tokenizer: Optional[str] = None, init_from: Optional[str] = None,
                 made_from: Optional[dict] = None):
        self.model_yaml = to_yaml(model_cfg)
        self.made_from = made_from or {}  # data, tokenizer, ranks: see flexbert.train.checkpointing.provenance
        self.phase, self.run_name, self.max_seq_len = phase, run_name, max_seq_len
        self.tokenizer = tokenizer
        self.history: list[dict] = [{"init_from": init_from}] if init_from else []
        self._state: Optional[State] = None

    def init(self, state: State, logger: Logger) -> None:
        self._state = state

    def current(self, state: Optional[State] = None) -> dict:
        state = state or self._state
        step = int(state.timestamp.batch) if state is not None else 0
        tokens = int(state.timestamp.token) if state is not None else 0
        return {"version": 1, "model_config": self.model_yaml, "phase": self.phase,
                "run_name": self.run_name, "max_seq_len": self.max_seq_len,
                "tokenizer": self.tokenizer, "step": step, "tokens": tokens,
                "made_from": self.made_from, "history": [dict(h) for h in self.history]}

    def state_dict(self) -> dict:
        return self.current()

    def load_state_dict(self, state: dict) -> None:
        history = [dict(h) for h in state.get("history", [])]
        if (state.get("phase"), state.get("run_name")) != (self.phase, self.run_name):
            history.append({k: state.get(k) for k in ("phase", "run_name", "step", "tokens",
                                                       "max_seq_len")})
        self.history = history


class Publish(Callback):
    """Publishes the training model as an HF folder every `every` (tokens or batches) and at the
    end of the phase, under `folder/<phase>-step<N>`; uploads when `repo_id` is set. Rank 0
    writes; under FSDP all ranks first gather the full weights to it."""

    def __init__(self, folder: str, info: PhaseInfo, every: Optional[str] = None,
                 at_end: bool = True, repo_id: Optional[str] = None,
                 revision: str = "{phase}-step{step}", tokenizer: Optional[str] = None):
        self.folder, self.info = folder, info
        self.every = Time.from_timestring(every) if every else None
        self.at_end, self.repo_id, self.revision = at_end, repo_id, revision
        self.tokenizer_source = tokenizer
        self.published: list[Path] = []
        self.uploads = BackgroundUploads()
        self._last_step: Optional[int] = None
        self._next: Optional[float] = None

    def _elapsed(self, state: State) -> float:
        return float(state.timestamp.get(self.every.unit).value)

    def fit_start(self, state: State, logger: Logger) -> None:
        if self.every is not None:  # the next multiple of `every` after where this run starts
            done = self._elapsed(state) // self.every.value
            self._next = (done + 1) * self.every.value

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        """After the step's checkpoint (the saver runs first at this event) is on disk."""
        if self.every is None or self._elapsed(state) < self._next:
            return
        while self._next <= self._elapsed(state):
            self._next += self.every.value
        self._publish(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        if self.at_end and self._last_step != int(state.timestamp.batch):
            self._publish(state)
        failures = self.uploads.finish()
        if failures:
            print(f"publish: {len(failures)} upload(s) failed (the local folders are kept): "
                  + "; ".join(failures), flush=True)

    def _publish(self, state: State) -> None:
        self._last_step = int(state.timestamp.batch)
        model = export_model(state)  # under FSDP every rank helps gather; rank 0 gets the model
        if model is not None:
            info = self.info.current(state)
            name = format_revision("{phase}-step{step}", info)  # a safe folder name
            was_training = model.training
            revision = format_revision(self.revision, info) if self.repo_id else None
            out = publish_model(model.eval(), Path(self.folder) / name, info,
                                load_tokenizer(existing_dir(self.tokenizer_source)),
                                self.repo_id, revision)
            model.train(was_training)
            self.published.append(out)
            print(f"published {out}", flush=True)
            if self.repo_id:
                self.uploads.submit(str(out), self.repo_id, revision)
        dist.barrier()

    def state_dict(self) -> dict:
        return {}
