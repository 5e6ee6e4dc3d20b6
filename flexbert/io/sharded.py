"""Read a sharded checkpoint folder (torch.distributed.checkpoint, as Composer writes under FSDP
with `state_dict_type: sharded`) into one process, without torch.distributed, and safely.

A folder holds `.metadata` (a pickle: which tensor chunks and byte items exist and where) and
`__<rank>_<n>.distcp` files (each item a `torch.save` stream at an offset). The pickle is read
with an Unpickler that admits only the checkpoint metadata classes and plain types; every item is
read with `torch.load(weights_only=True)`. Chunks are stitched into full tensors.
"""

from __future__ import annotations

import datetime
import io
import logging
import pickle
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
METADATA = ".metadata"

# (module, name) pairs `.metadata` may reference: DCP's own dataclasses and the torch types
# inside them. Anything else (a function, an arbitrary class) is refused.
_DCP_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
     ("torch", "Size"), ("collections", "OrderedDict"),
     ("torch.serialization", "_get_layout"),  # name -> torch.layout, as weights_only allows
     ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath")}
_TORCH_TYPES = (torch.dtype, torch.layout, torch.memory_format)
# Plain values Composer stores beside the weights (wall-clock times, the torch version string).
SAFE_VALUES = [datetime.timedelta, torch.torch_version.TorchVersion]
# Top-level parts a reader needs; an item elsewhere (rng states, ...) that cannot be read
# safely is left out rather than failing the whole checkpoint.
REQUIRED = ("state.model", "state.callbacks", "state.timestamp")


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _DCP_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_TYPES):
            return getattr(torch, name)  # dtypes, layouts and memory formats pickle by name
        raise pickle.UnpicklingError(f"{module}.{name} is not a checkpoint metadata type")


def is_sharded_checkpoint(path: str | Path) -> bool:
    return (Path(path) / METADATA).is_file()


def read_metadata(folder: Path) -> Any:
    try:
        with open(folder / METADATA, "rb") as f:
            return _MetadataUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as err:
        raise ValueError(f"{folder / METADATA}: not a readable sharded-checkpoint index ({err})") from None


def read_sharded_checkpoint(path: str | Path) -> dict:
    """The Composer `state` dict of a sharded checkpoint folder: {"model": {name: full tensor},
    "callbacks": ..., "timestamp": ..., "optimizers": ...}, the same names a `.pt` has."""
    folder = Path(path)
    if not is_sharded_checkpoint(folder):
        raise ValueError(f"{folder}: not a sharded checkpoint folder (no {METADATA} file)")
    meta = read_metadata(folder)
    paths = getattr(meta, "planner_data", None) or {}
    flat = _read_items(folder, meta)
    tree: dict = {}
    for fqn, value in flat.items():
        _put(tree, paths.get(fqn, tuple(fqn.split("."))), value)
    state = _lists(tree).get("state")
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{folder}: no 'state.model' in this checkpoint (not written by Composer?)")
    return state


def _put(tree: dict, keys, value: Any) -> None:
    """tree[k0][k1]... = value; list positions become int keys, made lists again by `_lists`."""
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    node = {key: _lists(value) for key, value in node.items()}
    if node and all(isinstance(k, int) for k in node) and sorted(node) == list(range(len(node))):
        return [node[i] for i in range(len(node))]
    return node


def _read_items(folder: Path, meta: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    chunks: dict[str, list] = {}
    for index, info in meta.storage_data.items():
        chunks.setdefault(index.fqn, []).append((index, info))
    flat: dict[str, Any] = {}
    for fqn, item in meta.state_dict_metadata.items():
        if isinstance(item, TensorStorageMetadata):
            flat[fqn] = _full_tensor(folder, fqn, item, chunks.get(fqn, []))
            continue
        try:
            with torch.serialization.safe_globals(SAFE_VALUES):
                flat[fqn] = torch.load(io.BytesIO(_read(folder, chunks[fqn][0][1])),
                                       weights_only=True)
        except (pickle.UnpicklingError, RuntimeError) as err:
            if fqn.startswith(REQUIRED):
                raise ValueError(f"{folder}: item {fqn} does not load safely "
                                 f"(weights_only): {str(err).splitlines()[0]}") from None
            log.info("sharded checkpoint %s: skipped %s (needs arbitrary unpickling)", folder, fqn)
    return flat


def _full_tensor(folder: Path, fqn: str, item: Any, parts: list) -> torch.Tensor:
    full = torch.empty(tuple(item.size), dtype=item.properties.dtype)
    covered = 0
    for index, info in parts:
        piece = torch.load(io.BytesIO(_read(folder, info)), weights_only=True, map_location="cpu")
        view = full
        for dim, (start, length) in enumerate(zip(index.offset, piece.shape)):
            view = view.narrow(dim, start, length)
        view.copy_(piece)
        covered += piece.numel()
    if covered != full.numel():
        raise ValueError(f"{folder}: tensor {fqn} has {covered} of {full.numel()} values in its "
                         "shard files (a rank's file is missing?)")
    return full


def _read(folder: Path, info: Any) -> bytes:
    if getattr(info, "transform_descriptors", None):
        raise ValueError(f"{folder / info.relative_path}: compressed or transformed items "
                         f"({info.transform_descriptors}) are not supported")
    with open(folder / info.relative_path, "rb") as f:
        f.seek(info.offset)
        return f.read(info.length)
