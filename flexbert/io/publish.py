"""Composer checkpoints -> Hugging Face ModernBERT folders (+ model card) [-> the Hub].

Every checkpoint written by `train.py` carries a `PhaseInfo` callback state: the resolved model
config, the phase's name, its step and tokens, and the phases before it. `flexbert publish` needs
nothing but the checkpoint (and a tokenizer); the folder it writes is what
`transformers.AutoModelForMaskedLM.from_pretrained` loads, with a README.md model card that names
the phase, the step and the tokens seen. `--repo-id` uploads it to a branch of a Hub repository
(Pythia-style: one revision per intermediate checkpoint).

A published folder holds exactly what was published last (written beside it, then swapped in)
and no paths of this machine; uploads during training run in the background (flexbert.io.hub).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from flexbert.io.checkpoint_reader import load_weights, read_source
from flexbert.io.hub import upload_with_retries
from flexbert.model import FlexBertForMaskedLM

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


def total_tokens(info: dict) -> int:
    return int(info.get("tokens") or 0) + sum(int(h.get("tokens") or 0)
                                              for h in info.get("history", []))


# --- reading checkpoints (flexbert.io.checkpoint_reader does the reading) -----------------------------

def checkpoint_model(path: str | os.PathLike, config: Optional[str] = None, trust: bool = False,
                     ) -> tuple[FlexBertForMaskedLM, dict]:
    """(model with the checkpoint's weights, its info). The model config comes from the
    checkpoint; `config` (a recipe YAML) is needed only for checkpoints without PhaseInfo."""
    source = read_source(str(path), trust, key="checkpoint")
    if config:
        from flexbert.model import recipe_model_config

        cfg = recipe_model_config(config)
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
    """The tokenizer to publish beside the weights, or None when the run names none."""
    if not source:
        return None
    from flexbert.io.checkpoint_reader import load_tokenizer_safely

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
    from flexbert.io.hf import save_hf

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

