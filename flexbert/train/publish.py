"""Composer checkpoints -> Hugging Face ModernBERT folders (+ model card), Hub uploads, averaging.

Every checkpoint written by `train.py` carries a `PhaseInfo` callback state: the resolved model
config, the phase's name, its step and tokens, and the phases before it. `flexbert publish` needs
nothing but the checkpoint (and a tokenizer); the folder it writes is what
`transformers.AutoModelForMaskedLM.from_pretrained` loads, with a README.md model card that names
the phase, the step and the tokens seen. `--repo-id` uploads it to a branch of a Hub repository
(Pythia-style: one revision per intermediate checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from composer.core import Callback, State, Time, TimeUnit
from composer.loggers import Logger
from composer.utils import dist
from omegaconf import OmegaConf

from flexbert.config import ModelConfig, model_config, to_yaml
from flexbert.model import FlexBertForMaskedLM

log = logging.getLogger(__name__)
INFO_KEY = "PhaseInfo"              # the callback's qualname: its key in state["callbacks"]
INFO_FILE = "flexbert_checkpoint.json"


# --- what a checkpoint knows about itself ----------------------------------------------------------

class PhaseInfo(Callback):
    """Saved in every checkpoint (state["callbacks"]["PhaseInfo"]).

    On a plain resume the loaded history is kept; when a new phase loads the previous phase's
    checkpoint (another phase name), that phase's step and tokens are appended to the history,
    so a model card can give tokens seen over all phases.
    """

    def __init__(self, model_cfg: ModelConfig, phase: str, run_name: str, max_seq_len: int,
                 tokenizer: Optional[str] = None, init_from: Optional[str] = None):
        self.model_yaml = to_yaml(model_cfg)
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
                "history": [dict(h) for h in self.history]}

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


# --- reading checkpoints ------------------------------------------------------------------------------

def read_checkpoint(path: str | os.PathLike) -> dict:
    """The `state` dict of a Composer checkpoint (memory-mapped where torch can)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "state" not in ckpt or "model" not in ckpt["state"]:
        raise ValueError(f"{path}: not a Composer checkpoint (no state.model)")
    return ckpt["state"]


def model_state(state: dict) -> dict[str, torch.Tensor]:
    """FlexBertForMaskedLM's own parameter names: the Composer wrapper's `model.` (and DDP's
    `module.`) prefixes removed."""
    out = {}
    for key, value in state["model"].items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def checkpoint_info(state: dict, path: str = "") -> dict:
    """PhaseInfo from the checkpoint, or what the timestamp tells for older checkpoints."""
    info = dict((state.get("callbacks") or {}).get(INFO_KEY) or {})
    if not info:
        ts = state.get("timestamp") or {}
        info = {"phase": None, "step": int(ts.get("batch", 0)), "tokens": int(ts.get("token", 0)),
                "history": []}
    info["checkpoint"] = os.path.basename(os.path.realpath(path)) if path else None
    return info


def checkpoint_model(path: str | os.PathLike, config: Optional[str] = None,
                     ) -> tuple[FlexBertForMaskedLM, dict]:
    """(model with the checkpoint's weights, its info). The model config comes from the
    checkpoint; `config` (a recipe YAML) is needed only for checkpoints without PhaseInfo."""
    state = read_checkpoint(path)
    info = checkpoint_info(state, str(path))
    if config:
        from flexbert.train.config import load_recipe

        cfg = load_recipe(config).model
    elif info.get("model_config"):
        cfg = model_config(OmegaConf.create(info["model_config"]), source=f"{path}: PhaseInfo")
    else:
        raise ValueError(f"{path}: the checkpoint carries no model config (written before "
                         "PhaseInfo existed); pass the recipe it was trained with: --config YAML")
    model = FlexBertForMaskedLM(cfg)
    load_weights(model, model_state(state), str(path))
    return model.eval(), info


def load_weights(model: FlexBertForMaskedLM, weights: dict[str, torch.Tensor], source: str) -> None:
    """Every parameter must be present with the same shape; rotary buffers are never loaded."""
    weights = {k: v for k, v in weights.items() if "inv_freq" not in k}
    own = model.state_dict()
    missing = [k for k in own if k not in weights and not (
        k == "decoder.weight" and model.config.head.tie_word_embeddings)]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k}: {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{source}: weights do not fit the model config; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")
    model.load_state_dict(weights, strict=False)
    model.tie_weights()


# --- writing a Hugging Face folder -----------------------------------------------------------------

def load_tokenizer(source: Optional[str]) -> Any:
    if not source:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


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
    """config.json + model.safetensors (+ tokenizer files) + README.md + flexbert_checkpoint.json."""
    from data_prep.tokenizer import save_tokenizer
    from flexbert.hf import save_hf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    return out


# --- the Hub -------------------------------------------------------------------------------------------

def upload(folder: str | os.PathLike, repo_id: str, revision: Optional[str] = None,
           token: Optional[str] = None, commit_message: Optional[str] = None) -> str:
    """Upload `folder` to `repo_id` at branch `revision` (created from main if missing).
    HF_ENDPOINT picks the server (read at call time, not at import). Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                             revision=revision or None,
                             commit_message=commit_message or f"Upload {Path(folder).name}")
    return str(getattr(info, "commit_url", info))


# The seam tests (and dry runs) replace: called as UPLOADER(folder, repo_id, revision).
UPLOADER: Callable[..., Any] = upload


def publish_checkpoint(checkpoint: str, out_dir: str, tokenizer: Optional[str] = None,
                       repo_id: Optional[str] = None, revision: Optional[str] = None,
                       config: Optional[str] = None) -> Path:
    """`flexbert publish`: a checkpoint -> HF folder [-> Hub branch]."""
    model, info = checkpoint_model(checkpoint, config)
    tok_source = tokenizer or _existing_dir(info.get("tokenizer"))
    revision = format_revision(revision, info) if revision else None
    out = publish_model(model, out_dir, info, load_tokenizer(tok_source), repo_id, revision)
    if repo_id:
        url = UPLOADER(str(out), repo_id, revision)
        log.info("uploaded %s to %s@%s: %s", out, repo_id, revision or "main", url)
    return out


def format_revision(template: str, info: dict) -> str:
    return template.format(phase=info.get("phase") or "phase", step=info.get("step", 0),
                           tokens=info.get("tokens", 0))


def _existing_dir(path: Optional[str]) -> Optional[str]:
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
        self._last_step: Optional[int] = None
        self._next: Optional[float] = None

    def _elapsed(self, state: State) -> float:
        return float(state.timestamp.get(self.every.unit).value)

    def fit_start(self, state: State, logger: Logger) -> None:
        if self.every is not None:  # the next multiple of `every` after where this run starts
            done = self._elapsed(state) // self.every.value
            self._next = (done + 1) * self.every.value

    def batch_end(self, state: State, logger: Logger) -> None:
        if self.every is None or self._elapsed(state) < self._next:
            return
        while self._next <= self._elapsed(state):
            self._next += self.every.value
        self._publish(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        if self.at_end and self._last_step != int(state.timestamp.batch):
            self._publish(state)

    def _publish(self, state: State) -> None:
        from flexbert.train.fsdp import export_model

        self._last_step = int(state.timestamp.batch)
        model = export_model(state)  # under FSDP every rank helps gather; rank 0 gets the model
        if model is not None:
            info = self.info.current(state)
            name = format_revision("{phase}-step{step}", info)
            was_training = model.training
            revision = format_revision(self.revision, info) if self.repo_id else None
            out = publish_model(model.eval(), Path(self.folder) / name, info,
                                load_tokenizer(_existing_dir(self.tokenizer_source)),
                                self.repo_id, revision)
            model.train(was_training)
            self.published.append(out)
            print(f"published {out}", flush=True)
            if self.repo_id:
                UPLOADER(str(out), self.repo_id, revision)
        dist.barrier()

    def state_dict(self) -> dict:
        return {}


# --- averaging -------------------------------------------------------------------------------------------

def _weights_of(source: str) -> tuple[dict[str, torch.Tensor], dict, Optional[ModelConfig]]:
    """(weights, info, config) of a Composer checkpoint or a Hugging Face / FlexBERT folder."""
    if os.path.isfile(source):
        state = read_checkpoint(source)
        info = checkpoint_info(state, source)
        cfg = (model_config(OmegaConf.create(info["model_config"]), source=source)
               if info.get("model_config") else None)
        return model_state(state), info, cfg
    from flexbert.train.continual import load_source_model

    model = load_source_model(source)
    return model.state_dict(), {"phase": None, "step": 0, "tokens": 0, "history": [],
                                "model_config": to_yaml(model.config)}, model.config


def average_checkpoints(sources: Sequence[str], out: str, tokenizer: Optional[str] = None) -> Path:
    """Mean of the weights (in fp32) of several checkpoints with the same architecture. `out`
    ending in `.pt` is a weights-only Composer-style checkpoint (`flexbert publish` and
    `model.init_from` read it); anything else becomes a published HF folder."""
    if len(sources) < 2:
        raise ValueError("average needs at least two checkpoints")
    total: dict[str, torch.Tensor] = {}
    infos, cfg = [], None
    for source in sources:
        weights, info, this_cfg = _weights_of(source)
        weights = {k: v for k, v in weights.items() if "inv_freq" not in k}
        cfg = cfg or this_cfg
        if total and (weights.keys() != total.keys() or any(
                weights[k].shape != total[k].shape for k in total)):
            raise ValueError(f"{source}: its weights do not match {sources[0]}'s (names or shapes)")
        for key, value in weights.items():
            total[key] = total.get(key, 0) + value.float()
        infos.append(info)
    mean = {k: v / len(sources) for k, v in total.items()}
    info = dict(infos[-1])
    info["averaged_from"] = [os.path.basename(os.path.realpath(s)) if os.path.isfile(s) else s
                             for s in sources]
    info["checkpoint"] = None
    if cfg is None:
        raise ValueError("no model config in any source; average Composer checkpoints written by "
                         "train.py or Hugging Face folders")
    info["model_config"] = to_yaml(cfg)
    if str(out).endswith(".pt"):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": {"model": {f"model.{k}": v for k, v in mean.items()},
                              "callbacks": {INFO_KEY: info}}}, out)
        return Path(out)
    model = FlexBertForMaskedLM(cfg)
    load_weights(model, mean, "average")
    tok = tokenizer or _existing_dir(info.get("tokenizer"))
    return publish_model(model.eval(), out, info, load_tokenizer(tok))
