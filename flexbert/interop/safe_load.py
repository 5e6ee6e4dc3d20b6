"""Open another code base's Composer checkpoint without running its code.

The default is torch's weights-only unpickler plus the few plain types every Composer checkpoint
holds (timedelta clocks, numpy RNG states, the torch version string). A file that needs more
(their own callback or algorithm classes) is refused unless the caller opts in; the opt-in loads
it with every class outside that allowlist replaced by an inert stub, so nothing of theirs is
imported or executed.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch

from flexbert.io.trust import UnsafeCheckpoint, load_with_stubs, safe_globals


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}" if hasattr(obj, "__qualname__") else str(obj)


def load(path: str, trust: bool = False, opt_in: str = "--trust-checkpoint") -> Any:
    """torch.load `path` safely; with `trust`, unknown classes become inert stubs."""
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust:
            raise UnsafeCheckpoint(f"{path}: needs classes outside the safe allowlist "
                                   f"({_needed(path, err)}); {opt_in} loads it with those classes "
                                   "replaced by inert stubs (none of their code runs)") from None
    except (RuntimeError, EOFError, OSError) as err:  # truncated or not a torch file at all
        raise ValueError(f"{path}: not a readable torch checkpoint "
                         f"({str(err).strip().splitlines()[0][:160]})") from None
    try:
        return load_with_stubs(path)
    except pickle.UnpicklingError as err:  # torch blocks os/posix/subprocess even when allowed
        raise UnsafeCheckpoint(f"{path}: refusing to load even with {opt_in}: "
                               f"{_needed(path, err)} can run code") from None


def _needed(path: str, err: Exception) -> str:
    try:
        allowed = {_qualname(g) for g in safe_globals()}
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        names = [n for n in names if n not in allowed]
        return ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    except Exception:  # older torch, or a file it cannot list
        return str(err).strip().splitlines()[-1][:200]
