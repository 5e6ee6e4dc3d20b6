"""The one place that opens checkpoints and model sources, and opens them safely.

A Composer checkpoint is a pickle, and unpickling can run any code the file names. Here every
`.pt` is read with `torch.load(weights_only=True)`: only tensors, plain containers and the few
types our own checkpoints hold (`SAFE_GLOBALS`: numpy arrays in the RNG state) are rebuilt. A
file that needs anything else is refused with `UnsafeCheckpoint` unless the user opts in with
`trust_checkpoint: true` (recipes) or `--trust-checkpoint` (commands). Model folders are read
with safetensors only. A folder with a `.metadata` file is a sharded (distributed) checkpoint,
read by `flexbert.io.sharded`.

`read_source` turns any model source (Composer `.pt`, sharded folder, FlexBERT model dir,
transformers folder, Hub name) into FlexBERT-named weights, what the source says about itself,
and its ModelConfig when it has one.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from flexbert.config import ConfigError, ModelConfig
from flexbert.io.trust import (TRUST_FLAG, TRUST_KEY, Stub, UnreadableCheckpoint,  # noqa: F401
                               UnsafeCheckpoint, _first_line, global_named, load_checkpoint,
                               load_tokenizer_safely, load_with_stubs, refuse_custom_code,
                               safe_globals)
from flexbert.model import model_config

INFO_KEY = "PhaseInfo"   # the PhaseInfo callback's key in state["callbacks"]
FLEXBERT_CONFIG, FLEXBERT_WEIGHTS = "flexbert.yaml", "model.safetensors"




def guard_composer_loads(trust: bool = False) -> None:
    """Make Composer's own loads (`load_path`, autoresume) go through the safe readers.

    Composer 0.32 reads monolithic checkpoints with a full `torch.load` (weights-only off) in
    `composer.utils.checkpoint._torch_load_with_validation`, after downloading them; replacing
    that one function covers local and object-store files alike. Sharded folders go through
    torch.distributed.checkpoint instead: `FileSystemReader.read_metadata` unpickles `.metadata`
    with plain `pickle` and `DefaultLoadPlanner.load_bytes` each byte item with
    a full `torch.load` (weights-only off); both are replaced (see `guard_sharded_loads`). `flexbert.train.checkpointing.provenance`
    also checks `load_path` and autoresume beforehand, so a refusal comes before any build."""
    from composer.utils import checkpoint as composer_checkpoint

    guard_sharded_loads(trust)
    if not hasattr(composer_checkpoint, "_torch_load_with_validation"):
        return

    def safe_load(path: str | os.PathLike, map_location: str = "cpu") -> dict:
        return load_checkpoint(path, trust, mmap=False)

    composer_checkpoint._torch_load_with_validation = safe_load


def guard_sharded_loads(trust: bool = False) -> None:
    """torch.distributed.checkpoint's two unpickling points, made safe for this process: the
    folder is checked whole (`check_sharded_folder`) when its `.metadata` is read, `.metadata`
    goes through the restricted unpickler, and every byte item through `read_bytes_item`'s
    weights-only load (stubs with the trust opt-in)."""
    import io

    from torch.distributed.checkpoint import default_planner, filesystem
    from torch.distributed.checkpoint.metadata import StorageMeta
    from torch.distributed.checkpoint._traverse import set_element

    from flexbert.io.sharded import check_sharded_folder, read_metadata

    def read_metadata_safely(self):
        folder = Path(str(self.path))
        check_sharded_folder(folder, trust)
        metadata = read_metadata(folder)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def load_bytes_safely(self, read_item, value: io.BytesIO) -> None:
        obj = _bytes_item(value, trust, read_item.dest_index.fqn)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj

    filesystem.FileSystemReader.read_metadata = read_metadata_safely
    default_planner.DefaultLoadPlanner.load_bytes = load_bytes_safely


def _bytes_item(value: Any, trust: bool, fqn: str) -> Any:
    try:
        if trust:
            return load_with_stubs(value)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(value, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpoint(f"sharded checkpoint item {fqn}: refusing to load: "
                               f"{global_named(err)}, which can run code") from None


def is_sharded(path: str | os.PathLike) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ".metadata"))


def load_checkpoint_state(path: str | os.PathLike, trust: bool = False) -> dict:
    """The Composer `state` dict of a `.pt` file or a sharded checkpoint folder."""
    path = str(path)
    if is_sharded(path):
        try:
            from flexbert.io.sharded import read_sharded_checkpoint
        except ImportError:
            raise UnreadableCheckpoint(f"{path}: a sharded checkpoint folder, and this FlexBERT "
                                       "has no flexbert.io.sharded reader") from None
        return read_sharded_checkpoint(path, trust)
    ckpt = load_checkpoint(path, trust)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state"), dict) \
            or not isinstance(ckpt["state"].get("model"), dict):
        raise UnreadableCheckpoint(f"{path}: not a Composer checkpoint (no state.model)")
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
        ts = ts.get("Timestamp", ts)  # Composer nests the fields under the class name
        info = {"phase": None, "step": int(ts.get("batch", 0)), "tokens": int(ts.get("token", 0)),
                "history": []}
    info["checkpoint"] = os.path.basename(os.path.realpath(path)) if path else None
    return info


def info_model_config(info: dict, source: str) -> Optional[ModelConfig]:
    if not info.get("model_config"):
        return None
    return model_config(OmegaConf.create(info["model_config"]), source=f"{source}: PhaseInfo")


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Every parameter must be present with the same shape; rotary buffers are never loaded."""
    weights = {k: v for k, v in weights.items() if "inv_freq" not in k}
    own = model.state_dict()
    missing = [k for k in own if "inv_freq" not in k and k not in weights and not (
        k == "decoder.weight" and model.config.head.tie_word_embeddings)]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k}: {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ConfigError(f"{source}: weights do not fit the model config; missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")
    model.load_state_dict(weights, strict=False)
    model.tie_weights()


# --- any model source -----------------------------------------------------------------------------

@dataclass
class Source:
    """A model source read into FlexBERT terms."""

    weights: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)
    config: Optional[ModelConfig] = None
    kind: str = "composer"        # composer | sharded | flexbert | hf


def looks_local(source: str) -> bool:
    """A path the user meant as a local file (so a typo must not become a Hub download)."""
    source = str(source)
    if source.startswith((".", "/", "~")) or os.path.isabs(source) or source.endswith(
            (".pt", ".pth", ".bin", ".safetensors", ".yaml")):
        return True
    # "org/name" is a Hub name unless a folder "org" exists here
    return os.sep in source and os.path.isdir(os.path.dirname(source))


def source_kind(source: str, key: str = "model.init_from") -> str:
    source = str(source)
    if os.path.isfile(source):
        return "composer"
    if is_sharded(source):
        return "sharded"
    if os.path.isdir(source) and (Path(source) / FLEXBERT_CONFIG).is_file():
        return "flexbert"
    if os.path.isdir(source) and not (Path(source) / "config.json").is_file():
        raise ConfigError(f"{key}: {source}: a folder without config.json, {FLEXBERT_CONFIG} or "
                          "a sharded checkpoint's .metadata")
    if not os.path.exists(source) and looks_local(os.path.expanduser(source)):
        raise ConfigError(f"{key}: {source}: no such file or folder")
    return "hf"  # a Hugging Face folder, or a Hub name


def source_config_tree(source: str, trust: bool = False, key: str = "model.init_from",
                       ) -> Optional[DictConfig]:
    """The FlexBERT model tree a Composer / sharded / FlexBERT source carries (None: it has none).
    Transformers sources are described by `hf_source_config` instead."""
    kind = source_kind(source, key)
    if kind in ("composer", "sharded"):
        info = checkpoint_info(load_checkpoint_state(source, trust), source)
        return OmegaConf.create(info["model_config"]) if info.get("model_config") else None
    if kind == "flexbert":
        return OmegaConf.load(Path(source) / FLEXBERT_CONFIG)
    return None


def hf_source_config(source: str, key: str = "model.init_from") -> tuple[Any, Optional[int]]:
    """(transformers config, the tokenizer's [MASK] id when the source has a tokenizer)."""
    from transformers import AutoConfig

    refuse_custom_code(source)
    try:
        return (AutoConfig.from_pretrained(source, trust_remote_code=False),
                _mask_id_from_tokenizer(source))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: {source}: {_first_line(err)}") from None


def _mask_id_from_tokenizer(source: str) -> Optional[int]:
    if os.path.isdir(source) and not any(
            (Path(source) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    refuse_custom_code(source)  # outside the try: a refusal is not "no tokenizer"
    try:
        return load_tokenizer_safely(source).mask_token_id
    except (OSError, ValueError):
        return None


def read_source(source: str | os.PathLike, trust: bool = False,
                key: str = "model.init_from") -> Source:
    """Weights (FlexBERT names), info and ModelConfig of any model source; never unpickles
    unsafely (transformers folders are read from safetensors only)."""
    source = str(source)
    kind = source_kind(source, key)
    if kind in ("composer", "sharded"):
        state = load_checkpoint_state(source, trust)
        info = checkpoint_info(state, source)
        return Source(model_state(state), info, info_model_config(info, source), kind)
    if kind == "flexbert":
        from safetensors.torch import load_file

        tree = OmegaConf.load(Path(source) / FLEXBERT_CONFIG)
        cfg = model_config(tree, source=str(Path(source) / FLEXBERT_CONFIG))
        weights = load_file(str(Path(source) / FLEXBERT_WEIGHTS))
        return Source(weights, _plain_info(cfg), cfg, kind)
    from transformers import ModernBertForMaskedLM

    from flexbert.io.hf import flex_config_from_hf

    refuse_custom_code(source)
    try:  # safetensors only: a pytorch_model.bin would be unpickled
        hf_model = ModernBertForMaskedLM.from_pretrained(source, use_safetensors=True)
    except OSError as err:
        raise UnreadableCheckpoint(f"{key}: {source}: {_first_line(err)}") from None
    cfg = flex_config_from_hf(hf_model.config)
    return Source(hf_model.state_dict(), _plain_info(cfg), cfg, "hf")


def _plain_info(cfg: ModelConfig) -> dict:
    from flexbert.config import to_yaml

    return {"phase": None, "step": 0, "tokens": 0, "history": [], "model_config": to_yaml(cfg)}
