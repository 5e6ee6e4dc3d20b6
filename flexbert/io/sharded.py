"""Read a sharded checkpoint folder (torch.distributed.checkpoint, as Composer writes under FSDP
with `state_dict_type: sharded`) into one process, without torch.distributed, and safely.

A folder holds `.metadata` (a pickle: which tensor chunks and byte items exist and where) and
`__<rank>_<n>.distcp` files (each item a `torch.save` stream at an offset). The pickle is read
with an Unpickler that admits only the checkpoint metadata classes and plain types; every item is
read with `torch.load(weights_only=True)`. Chunks are stitched into full tensors.

`check_sharded_folder` is the gate in front of Composer and torch.distributed.checkpoint, which
unpickle `.metadata` with plain `pickle` and byte items with a full `torch.load` (weights-only off): every byte item
must load safely (with the trust opt-in: foreign classes as inert stubs), or the folder is refused
naming the item, before either library opens it. `.metadata` is never trusted: a genuine one
names only the classes below.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
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
    from flexbert.io.trust import UnreadableCheckpoint, UnsafeCheckpoint

    try:
        with open(folder / METADATA, "rb") as f:
            return _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpoint(f"{folder / METADATA}: not a readable sharded-checkpoint index "
                               f"({err}); refusing it, with or without trust_checkpoint") from None
    except (EOFError, AttributeError, ImportError, TypeError, ValueError, IndexError,
            KeyError, OSError) as err:
        raise UnreadableCheckpoint(f"{folder / METADATA}: not a readable sharded-checkpoint "
                                   f"index ({type(err).__name__}: {err})") from None


def read_sharded_checkpoint(path: str | Path, trust: bool = False) -> dict:
    """The Composer `state` dict of a sharded checkpoint folder: {"model": {name: full tensor},
    "callbacks": ..., "timestamp": ..., "optimizers": ...}, the same names a `.pt` has."""
    from flexbert.io.trust import UnreadableCheckpoint

    folder = Path(path)
    if not is_sharded_checkpoint(folder):
        raise UnreadableCheckpoint(f"{folder}: not a sharded checkpoint folder (no {METADATA} file)")
    meta = read_metadata(folder)
    paths = getattr(meta, "planner_data", None) or {}
    flat = _read_items(folder, meta, trust)
    tree: dict = {}
    for fqn, value in flat.items():
        _put(tree, paths.get(fqn, tuple(fqn.split("."))), value)
    state = _lists(tree).get("state")
    if not isinstance(state, dict) or "model" not in state:
        raise UnreadableCheckpoint(f"{folder}: no 'state.model' in this checkpoint (not written "
                                   "by Composer?)")
    return state


def check_sharded_folder(path: str | Path, trust: bool = False) -> None:
    """Refuse (UnsafeCheckpoint / UnreadableCheckpoint) a folder whose `.metadata` or any byte
    item would need arbitrary unpickling; call before Composer or torch load it."""
    folder = Path(path)
    meta = read_metadata(folder)
    _read_items(folder, meta, trust, tensors=False)


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


def _read_items(folder: Path, meta: Any, trust: bool, tensors: bool = True) -> dict[str, Any]:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from flexbert.io.trust import UnreadableCheckpoint

    try:
        chunks: dict[str, list] = {}
        for index, info in meta.storage_data.items():
            chunks.setdefault(index.fqn, []).append((index, info))
        items = list(meta.state_dict_metadata.items())
    except (AttributeError, TypeError) as err:
        raise UnreadableCheckpoint(f"{folder / METADATA}: not a sharded-checkpoint index "
                                   f"({err})") from None
    flat: dict[str, Any] = {}
    for fqn, item in items:
        if isinstance(item, TensorStorageMetadata):
            if tensors:
                flat[fqn] = _full_tensor(folder, fqn, item, chunks.get(fqn, []))
            continue
        if not chunks.get(fqn):
            raise UnreadableCheckpoint(f"{folder / METADATA}: item {fqn} has no storage entry")
        flat[fqn] = read_bytes_item(folder, fqn, chunks[fqn][0][1], trust)
    return flat


def read_bytes_item(folder: Path, fqn: str, info: Any, trust: bool) -> Any:
    """One byte item, weights-only; a foreign class is refused naming the item and its file,
    or (trust) becomes an inert stub. Modules torch blocks (os, subprocess) are always refused."""
    from flexbert.io.trust import (TRUST_FLAG, TRUST_KEY, UnreadableCheckpoint,
                                            UnsafeCheckpoint, load_with_stubs, safe_globals,
                                            global_named)

    where = f"{folder / info.relative_path}: item {fqn}"
    data = _read(folder, info)
    try:
        if trust:
            return load_with_stubs(io.BytesIO(data))
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        if trust:
            raise UnsafeCheckpoint(f"{where}: refusing to load even with {TRUST_KEY}: "
                                   f"{global_named(err)}, which can run code") from None
        raise UnsafeCheckpoint(f"{where}: refusing to load: it needs arbitrary unpickling, which "
                               f"can run code ({global_named(err)}); if you trust where it came "
                               f"from, set {TRUST_KEY}=true (or pass {TRUST_FLAG})") from None
    except (RuntimeError, EOFError, ValueError, KeyError, OSError) as err:
        raise UnreadableCheckpoint(f"{where}: truncated or corrupted "
                                   f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from None


def _full_tensor(folder: Path, fqn: str, item: Any, parts: list) -> torch.Tensor:
    from flexbert.io.trust import UnreadableCheckpoint

    full = torch.empty(tuple(item.size), dtype=item.properties.dtype)
    covered = 0
    for index, info in parts:
        try:
            piece = torch.load(io.BytesIO(_read(folder, info)), weights_only=True,
                               map_location="cpu")
            view = full
            for dim, (start, length) in enumerate(zip(index.offset, piece.shape)):
                view = view.narrow(dim, start, length)
            view.copy_(piece)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, IndexError) as err:
            raise UnreadableCheckpoint(f"{folder / info.relative_path}: tensor {fqn} does not "
                                       f"read back ({type(err).__name__}: "
                                       f"{(str(err).splitlines() or [''])[0]})") from None
        covered += piece.numel()
    if covered != full.numel():
        raise UnreadableCheckpoint(f"{folder}: tensor {fqn} has {covered} of {full.numel()} values in its "
                         "shard files (a rank's file is missing?)")
    return full


def _read(folder: Path, info: Any) -> bytes:
    from flexbert.io.trust import UnreadableCheckpoint

    if getattr(info, "transform_descriptors", None):
        raise UnreadableCheckpoint(f"{folder / info.relative_path}: compressed or transformed "
                                   f"items ({info.transform_descriptors}) are not supported")
    path = folder / str(info.relative_path)
    if os.path.dirname(os.path.normpath(str(info.relative_path))) or not path.is_file():
        raise UnreadableCheckpoint(f"{folder / METADATA}: names shard file "
                                   f"{info.relative_path!r}, which is not a file in the folder")
    with open(path, "rb") as f:
        f.seek(info.offset)
        return f.read(info.length)
