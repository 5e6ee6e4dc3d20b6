"""What `flexbert eval` evaluates: a run's Composer checkpoints or published Hugging Face folders,
each made into a model folder that every task kind can read, with the tokens it had seen."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from flexbert.config import ConfigError
from flexbert.io.run_identity import read_run_id

CHECKPOINT = re.compile(r"ep(\d+)-ba(\d+)-rank0\.pt$")
INFO_FILE = "flexbert_checkpoint.json"


@dataclass
class Source:
    label: str          # unique, stable: the key results are stored under
    path: Path
    kind: str           # composer | folder


def find_sources(entries: Sequence[str]) -> list[Source]:
    """A checkpoint file, a model folder (config.json), a run folder (its ep*-ba*-rank0.pt
    checkpoints, else its published/ folders, else hf/), or a folder of model folders."""
    found: list[Source] = []
    for entry in entries:
        path = Path(entry)
        if path.is_file():
            found.append(Source(_checkpoint_label(path), path, "composer"))
        elif (path / "config.json").is_file():
            found.append(Source(path.name, path, "folder"))
        elif path.is_dir():
            found += _run_sources(path)
        else:
            raise FileNotFoundError(f"{entry}: no such checkpoint, model folder or run folder")
    labels = [s.label for s in found]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two sources share a label ({labels}); evaluate them separately")
    return found


def _checkpoint_label(path: Path) -> str:
    return f"{path.resolve().parent.name}/{path.name.removesuffix('-rank0.pt').removesuffix('.pt')}"


def _run_sources(run: Path) -> list[Source]:
    checkpoints = sorted((p for p in run.iterdir() if CHECKPOINT.search(p.name) and not p.is_symlink()),
                         key=lambda p: int(CHECKPOINT.search(p.name).group(2)))
    if checkpoints:
        return [Source(_checkpoint_label(p), p, "composer") for p in checkpoints]
    for folder in (run / "published", run):
        models = sorted(p for p in folder.iterdir() if (p / "config.json").is_file()) \
            if folder.is_dir() else []
        if models:
            return [Source(p.name, p, "folder") for p in models]
    raise FileNotFoundError(f"{run}: no checkpoints (ep*-ba*-rank0.pt) or model folders "
                            "(config.json) to evaluate")


def source_run_id(path: Path) -> Optional[str]:
    """The id of the run a checkpoint file belongs to (its folder's run_id), else None."""
    return read_run_id(path.parent) if path.suffix == ".pt" else None


def prepare(source: Source, models_dir: Path, tokenizer: Optional[str] = None) -> tuple[Path, dict]:
    """(model folder, {step, tokens}) of a source; a Composer checkpoint is published once into
    models_dir (its model card and flexbert_checkpoint.json carry the step and tokens), again
    when the folder there came from an earlier run of the same name (another run id)."""
    if source.kind == "folder":
        return source.path, read_position(source.path)
    out = models_dir / source.label.replace("/", "__")
    run_id = source_run_id(source.path)
    if not (out / INFO_FILE).is_file() or read_run_id(out) != run_id:
        import shutil

        from flexbert.io.publish import publish_checkpoint

        shutil.rmtree(out, ignore_errors=True)
        publish_checkpoint(str(source.path), str(out), tokenizer=tokenizer)
        if run_id:
            (out / "run_id").write_text(run_id + "\n")
    return out, read_position(out)


def read_position(folder: Path) -> dict:
    """Step and tokens seen (all phases) from a published folder's flexbert_checkpoint.json."""
    info_file = folder / INFO_FILE
    if not info_file.is_file():
        return {"step": None, "tokens": None}
    info = json.loads(info_file.read_text())
    return {"step": info.get("step"), "tokens": info.get("tokens_all_phases", info.get("tokens"))}
