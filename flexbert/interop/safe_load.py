"""Open another code base's Composer checkpoint without running its code.

The default is torch's weights-only unpickler plus the few plain types every Composer checkpoint
holds (timedelta clocks, numpy RNG states, the torch version string). A file that needs more
(their own callback or algorithm classes) is refused unless the caller opts in; the opt-in loads
it with every class outside that allowlist replaced by an inert stub, so nothing of theirs is
imported or executed.
"""

from __future__ import annotations

import pickle
import types
from typing import Any

import torch

from flexbert.checkpoint_reader import UnsafeCheckpoint, safe_globals


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
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=stub_pickle())


def _needed(path: str, err: Exception) -> str:
    try:
        allowed = {_qualname(g) for g in safe_globals()}
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        names = [n for n in names if n not in allowed]
        return ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    except Exception:  # older torch, or a file it cannot list
        return str(err).strip().splitlines()[-1][:200]


class Stub:
    """Stands in for a class the checkpoint names but we will not import: keeps what the pickle
    hands it as data and does nothing else."""

    origin = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.items, self.list = args, kwargs, {}, []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list.append(value)

    def extend(self, values: Any) -> None:
        self.list.extend(values)

    def __repr__(self) -> str:
        return f"<stub for {self.origin}>"


def _allowed() -> dict[str, Any]:
    allowed: dict[str, Any] = {}
    try:  # torch's own weights-only allowlist (tensor rebuilds, dtypes, OrderedDict, ...)
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed.update(_get_allowed_globals())
    except ImportError:
        import collections

        from torch._utils import _rebuild_parameter, _rebuild_tensor_v2

        allowed.update({_qualname(f): f for f in (_rebuild_tensor_v2, _rebuild_parameter,
                                                  collections.OrderedDict, torch.Size)})
    allowed.update({_qualname(g): g for g in safe_globals()})
    return allowed


def stub_pickle() -> types.ModuleType:
    """A pickle module whose Unpickler resolves only allowlisted globals; others get a Stub."""
    allowed = _allowed()
    stubs: dict[str, type] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            key = f"{module}.{name}"
            if key in allowed:
                return allowed[key]
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            if key not in stubs:
                stubs[key] = type(name, (Stub,), {"origin": key, "__module__": __name__})
            return stubs[key]

    mod = types.ModuleType("flexbert_stub_pickle")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    mod.__name__ = "flexbert_stub_pickle"
    return mod
