"""The trust rules every reader applies: pickles are opened weights-only with a short allowlist
(a foreign class is refused, or with the trust opt-in becomes an inert stub), and model or
tokenizer folders that ship their own code are refused. Nothing here runs a user's code."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any

import torch

from flexbert.config import ConfigError


TRUST_KEY = "trust_checkpoint"


TRUST_FLAG = "--trust-checkpoint"


class UnsafeCheckpoint(ValueError):
    """A checkpoint that could run code when loaded (it needs more than weights_only allows)."""


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that is missing, truncated or not a Composer checkpoint."""


def _numpy_globals() -> list:
    """What numpy arrays and dtypes in Composer's RNG state unpickle through (numpy 1 and 2)."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "float32", "int32", "bool")]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


def safe_globals() -> list:
    """Every type a checkpoint written by Composer 0.32 + FlexBERT holds besides tensors and plain
    containers: the timestamp's wall-clock times, the recorded torch version (a str subclass)
    and numpy's RNG state."""
    import datetime

    from torch.torch_version import TorchVersion

    return [datetime.timedelta, TorchVersion, *_numpy_globals()]


def global_named(err: Exception) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))  # torch names the offending global
    return f"it references {found.group(1)}" if found else _first_line(err)


def _unsafe_message(path: str, err: Exception) -> str:
    detail = global_named(err)
    return (f"{path}: refusing to load: the file needs arbitrary unpickling, which can run code "
            f"({detail}); if you trust where it came from, set {TRUST_KEY}=true "
            f"(or pass {TRUST_FLAG})")


def load_checkpoint(path: str | os.PathLike, trust: bool = False, mmap: bool = True) -> dict:
    """The whole dict of a Composer `.pt` (`state`, `rng`), loaded safely; memory-mapped unless
    the tensors will be trained on in place (`mmap=False`).

    `trust=True` is the user's explicit opt-in for older or foreign files: they load with every
    class outside the allowlist replaced by an inert `Stub` (still weights-only, no code runs)."""
    path = str(path)
    if not os.path.isfile(path):
        what = "a dangling link" if os.path.islink(path) else "no such file"
        raise UnreadableCheckpoint(f"{path}: {what}")
    if not zipfile.is_zipfile(path):
        raise UnreadableCheckpoint(f"{path}: truncated or not a torch checkpoint (no zip "
                                   "directory at its end)")
    try:
        if trust:
            return load_with_stubs(path, mmap)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if trust:  # torch blocks modules such as os/posix/subprocess even when allowlisted
            raise UnsafeCheckpoint(f"{path}: refusing to load even with {TRUST_KEY}: "
                                   f"{global_named(err)}, which can run code") from None
        raise UnsafeCheckpoint(_unsafe_message(path, err)) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise UnreadableCheckpoint(f"{path}: truncated or corrupted checkpoint "
                                   f"({_first_line(err)})") from None


class Stub:
    """Stands in for a class or function a trusted checkpoint names but we never import: keeps
    what the unpickler hands it as data and does nothing else."""

    origin = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stub for {self.origin}>"


def load_with_stubs(path: Any, mmap: bool = False) -> Any:
    """torch.load with weights_only=True, where every global outside `safe_globals()` resolves
    to its own `Stub` subclass: a foreign file loads, and none of its code is imported or run.
    `path` may be an in-memory stream (a sharded checkpoint's byte item)."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in safe_globals()}
    stream = hasattr(path, "read")
    names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(
        path if stream else str(path)) if n not in allowed]
    if stream:
        path.seek(0)
    stubs = [(type(n.rsplit(".", 1)[-1], (Stub,), {"origin": n}), n) for n in names]
    with torch.serialization.safe_globals([*safe_globals(), *stubs]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and not stream)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def refuse_custom_code(source: str | os.PathLike) -> None:
    """A local model or tokenizer folder that asks to import its own Python code (auto_map, an
    unknown tokenizer_class) is refused naming the file and the key (ConfigError, exit 2)."""
    from data_prep.tokenizer import custom_code_problem

    problem = custom_code_problem(str(source)) if os.path.isdir(source) else None
    if problem:
        raise ConfigError(problem)


def load_tokenizer_safely(source: str | os.PathLike) -> Any:
    """AutoTokenizer for a folder or Hub name, never running code the source ships; a folder
    that cannot be loaded is a ConfigError naming it."""
    from data_prep.tokenizer import open_tokenizer

    refuse_custom_code(source)
    try:
        return open_tokenizer(source)
    except Exception as err:  # transformers and tokenizers raise many types for a bad folder
        raise ConfigError(f"{source}: cannot load the tokenizer ({_first_line(err)[:200]})") \
            from None
