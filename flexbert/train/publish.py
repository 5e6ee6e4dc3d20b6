"""Composer checkpoints -> Hugging Face ModernBERT folders (+ model card) [-> the Hub].

Every checkpoint written by `train.py` carries a `PhaseInfo` callback state: the resolved model
config, the phase's name, its step and tokens, and the phases before it. `flexbert publish` needs
nothing but the checkpoint (and a tokenizer); the folder it writes is what
`transformers.AutoModelForMaskedLM.from_pretrained` loads, with a README.md model card that names
the phase, the step and the tokens seen. `--repo-id` uploads it to a branch of a Hub repository
(Pythia-style: one revision per intermediate checkpoint).

A published folder holds exactly what was published last (written beside it, then swapped in)
and no paths of this machine; uploads during training run in the background (flexbert.train.hub).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

from composer.core import Callback, State, Time
from composer.loggers import Logger
from composer.utils import dist
from omegaconf import OmegaConf

from flexbert.checkpoint_reader import load_weights, read_source
from flexbert.config import ModelConfig, to_yaml
from flexbert.model import FlexBertForMaskedLM
from flexbert.train.hub import BackgroundUploads, upload_with_retries

log = logging.getLogger(__name__)
INFO_FILE = "flexbert_checkpoint.json"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_safe_name(name: str, key: str) -> str:
    """Phase and revision names become folder names: no separators, no `..`."""
    if not SAFE_NAME.match(name or "") or ".." in name:
        raise ValueError(f"{key}: {name!r} is not a safe name (letters, digits, '.', '_', '-'; "
                         "no '/' or '..')")
    return name


def public_name(source: Optional[str]) -> Optional[str]:
    """A Hub name as it is; a local path as its last component (no paths of this machine)."""
    if not source:
        return source
    source = str(source)
    if os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(source):
        return os.path.basename(os.path.normpath(source))
    return source


def public_info(info: dict) -> dict:
    out = dict(info, tokenizer=public_name(info.get("tokenizer")))
    out["history"] = [dict(h, init_from=public_name(h["init_from"])) if "init_from" in h else h
                      for h in info.get("history", [])]
    return out


# --- what a checkpoint knows about itself ----------------------------------------------------------

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
        self.made_from = made_from or {}  # data, tokenizer, ranks: see flexbert.train.resume
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


def total_tokens(info: dict) -> int:
    return int(info.get("tokens") or 0) + sum(int(h.get("tokens") or 0)
                                              for h in info.get("history", []))


# --- reading checkpoints (flexbert.checkpoint_reader does the reading) -----------------------------

def checkpoint_model(path: str | os.PathLike, config: Optional[str] = None, trust: bool = False,
                     ) -> tuple[FlexBertForMaskedLM, dict]:
    """(model with the checkpoint's weights, its info). The model config comes from the
    checkpoint; `config` (a recipe YAML) is needed only for checkpoints without PhaseInfo."""
    source = read_source(str(path), trust, key="checkpoint")
    if config:
        from flexbert.train.config import load_recipe

        cfg = load_recipe(config).model
    elif source.config is not None:
        cfg = source.config
    else:
        raise ValueError(f"{path}: the checkpoint carries no model config (written before "
                         "PhaseInfo existed); pass the recipe it was trained with: --config YAML")
    model = FlexBertForMaskedLM(cfg)
    load_weights(model, source.weights, str(path))
    return model.eval(), source.info


# --- writing a Hugging Face folder -----------------------------------------------------------------

def load_tokenizer(source: Optional[str]) -> Any:
    if not source:
        return None
    from flexbert.checkpoint_reader import load_tokenizer_safely

    return load_tokenizer_safely(source)


def model_card(info: dict, repo_id: Optional[str] = None, revision: Optional[str] = None) -> str:
    """README.md: front matter for the Hub, then phase, step and tokens seen."""
    cfg = OmegaConf.create(info["model_config"]) if info.get("model_config") else None
    phase = info.get("phase") or "unknown"
    lines = ["---", "library_name: transformers", "pipeline_tag: fill-mask",
             "tags: [modernbert, flexbert, fill-mask]", "---", "",
             f"# {repo_id or info.get('run_name') or 'FlexBERT checkpoint'}"
             + (f" ({revision})" if revision else ""), "",
             "A ModernBERT-style masked language model trained with FlexBERT, converted from a "
             "Composer checkpoint for `transformers.AutoModelForMaskedLM`.", "",
             "| | |", "|---|---|",
             f"| phase | {phase} |",
             f"| run | {info.get('run_name') or '-'} |",
             f"| step (in this phase) | {info.get('step', 0)} |",
             f"| tokens seen (this phase) | {int(info.get('tokens') or 0):,} |",
             f"| tokens seen (all phases) | {total_tokens(info):,} |"]
    if info.get("max_seq_len"):
        lines.append(f"| sequence length | {info['max_seq_len']} |")
    if cfg is not None:
        lines.append(f"| layers x hidden | {cfg.num_layers} x {cfg.hidden_size} |")
        lines.append(f"| RoPE theta (global / local) | {cfg.position.global_theta:g} / "
                     f"{cfg.position.local_theta:g} |")
    if info.get("checkpoint"):
        lines.append(f"| source checkpoint | `{info['checkpoint']}` |")
    if info.get("averaged_from"):
        lines.append(f"| average of | {', '.join(f'`{p}`' for p in info['averaged_from'])} |")
    history = [h for h in info.get("history", []) if h]
    if history:
        lines += ["", "Earlier phases:", ""]
        for h in history:
            if "init_from" in h:
                lines.append(f"- initialised from `{h['init_from']}`")
            else:
                lines.append(f"- {h.get('phase')}: {h.get('step')} steps, "
                             f"{int(h.get('tokens') or 0):,} tokens")
    lines += ["", "```python", "from transformers import AutoModelForMaskedLM, AutoTokenizer",
              f"model = AutoModelForMaskedLM.from_pretrained({(repo_id or 'PATH')!r}"
              + (f", revision={revision!r})" if revision else ")"), "```", ""]
    return "\n".join(lines)


def publish_model(model: FlexBertForMaskedLM, out_dir: str | os.PathLike, info: dict,
                  tokenizer: Any = None, repo_id: Optional[str] = None,
                  revision: Optional[str] = None) -> Path:
    """config.json + model.safetensors (+ tokenizer files) + README.md + flexbert_checkpoint.json,
    written to a temporary folder that then replaces `out_dir` (no stale files survive)."""
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not (out / INFO_FILE).is_file():
        raise ValueError(f"{out}: exists and is not a folder written by `flexbert publish`; "
                         "choose a new or empty folder")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _write_published(model, tmp, public_info(info), tokenizer, repo_id, revision)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)
    return out


def _write_published(model: FlexBertForMaskedLM, out: Path, info: dict, tokenizer: Any,
                     repo_id: Optional[str], revision: Optional[str]) -> None:
    from data_prep.tokenizer import save_tokenizer
    from flexbert.hf import save_hf

    # ModernBertConfig has no mask id; keep ours so `init_from` gets it back without a tokenizer.
    save_hf(model, out, mask_token_id=model.config.mask_token_id)
    if tokenizer is not None:
        if tokenizer.mask_token_id is not None and tokenizer.mask_token_id != model.config.mask_token_id:
            log.warning("tokenizer's [MASK] id %s differs from the model's mask_token_id %s",
                        tokenizer.mask_token_id, model.config.mask_token_id)
        save_tokenizer(tokenizer, out)
    else:
        log.warning("no tokenizer for %s: the folder has weights and config only", out)
    (out / "README.md").write_text(model_card(info, repo_id, revision))
    meta = {k: v for k, v in info.items() if k != "model_config"}
    meta["tokens_all_phases"] = total_tokens(info)
    (out / INFO_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")


def publish_checkpoint(checkpoint: str, out_dir: str, tokenizer: Optional[str] = None,
                       repo_id: Optional[str] = None, revision: Optional[str] = None,
                       config: Optional[str] = None, trust: bool = False) -> Path:
    """`flexbert publish`: a checkpoint -> HF folder [-> Hub branch]."""
    model, info = checkpoint_model(checkpoint, config, trust)
    tok_source = tokenizer or existing_dir(info.get("tokenizer"))
    revision = format_revision(revision, info) if revision else None
    out = publish_model(model, out_dir, info, load_tokenizer(tok_source), repo_id, revision)
    if repo_id:
        try:
            url = upload_with_retries(str(out), repo_id, revision)
        except Exception as err:  # the folder is written; only the upload failed
            raise RuntimeError(f"{out} written, but the upload to {repo_id}@{revision or 'main'} "
                               f"failed: {str(err).splitlines()[0] if str(err) else err!r}") from None
        log.info("uploaded %s to %s@%s: %s", out, repo_id, revision or "main", url)
    return out


def format_revision(template: str, info: dict) -> str:
    name = template.format(phase=info.get("phase") or "phase", step=info.get("step", 0),
                           tokens=info.get("tokens", 0))
    return check_safe_name(name, "revision")


def existing_dir(path: Optional[str]) -> Optional[str]:
    return path if path and os.path.isdir(path) else None


# --- the training callback -----------------------------------------------------------------------------

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
        from flexbert.train.fsdp import export_model

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
