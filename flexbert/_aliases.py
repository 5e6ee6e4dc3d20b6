"""Old import paths (FlexBERT 0.1's flat layout), kept for one release as thin aliases.

Each old module name resolves to the module that now holds its code (the same module object,
so patching either path patches both) and warns once with FutureWarning naming the new path;
an old module whose code was split resolves to a view over its successors. Nothing inside
FlexBERT imports these names (tests/test_layering.py checks it); they go in FlexBERT 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

REMOVED_IN = "0.3"

# old module -> new module, or the modules its code was split into (looked up in this order)
MODULES: dict[str, str | tuple[str, ...]] = {
    "flexbert.layers": "flexbert.model",
    "flexbert.layers.activations": "flexbert.model.activations",
    "flexbert.layers.attention": "flexbert.model.attention",
    "flexbert.layers.blocks": "flexbert.model.blocks",
    "flexbert.layers.embeddings": "flexbert.model.embeddings",
    "flexbert.layers.kernels": "flexbert.model.attention.kernels",
    "flexbert.layers.loss": "flexbert.model.loss",
    "flexbert.layers.mlp": "flexbert.model.mlp",
    "flexbert.layers.norm": "flexbert.model.norm",
    "flexbert.layers.pooling": "flexbert.model.pooling",
    "flexbert.layers.rotary": "flexbert.model.attention.rotary",
    "flexbert.padding": ("flexbert.model.attention.layout", "flexbert.model.compile"),
    "flexbert.init": "flexbert.model.init",
    "flexbert.components": "flexbert.plugins",
    "flexbert.checkpoint_reader": "flexbert.io.checkpoint_reader",
    "flexbert.sharded": "flexbert.io.sharded",
    "flexbert.hf": "flexbert.io.hf",
    "flexbert.train.publish": ("flexbert.io.publish", "flexbert.train.callbacks.publish"),
    "flexbert.train.hub": "flexbert.io.hub",
    "flexbert.train.average": "flexbert.io.average",
    "flexbert.train.commands": "flexbert.io.cli",
    "flexbert.train.model": "flexbert.runtime.composer_model",
    "flexbert.train.config": ("flexbert.train.recipe.schema", "flexbert.train.recipe.load"),
    "flexbert.train.recipe_help": "flexbert.train.recipe.help",
    "flexbert.train.preflight": "flexbert.train.recipe.preflight",
    "flexbert.train.data": "flexbert.train.recipe.data",
    "flexbert.train.console": "flexbert.train.callbacks.console",
    "flexbert.train.summary": "flexbert.train.callbacks.summary",
    "flexbert.train.guard": "flexbert.train.callbacks.nonfinite",
    "flexbert.train.loss_spike": "flexbert.train.callbacks.loss_spike",
    "flexbert.evaluation.callback": "flexbert.train.callbacks.downstream_eval",
    "flexbert.train.checkpoint": "flexbert.train.checkpointing.saver",
    "flexbert.train.rerun": "flexbert.train.checkpointing.launch_plan",
    "flexbert.train.resume": "flexbert.train.checkpointing.provenance",
    "flexbert.train.continual": "flexbert.train.checkpointing.init_from",
    "flexbert.train.stale_memory": "flexbert.train.checkpointing.shm_cleanup",
    "flexbert.train.fsdp": ("flexbert.train.distributed.fsdp", "flexbert.train.distributed.gloo",
                            "flexbert.runtime.distributed"),
    "flexbert.train.plan": "flexbert.train.planning.plan",
    "flexbert.train.activations": "flexbert.train.planning.activations",
    "flexbert.train.extensions": "flexbert.train.registries",
}

# (module that still exists, name that left it) -> the module that holds the name now
ATTRIBUTES: dict[tuple[str, str], str] = {
    ("flexbert.config", "load_model_config"): "flexbert.model.config_check",
    ("flexbert.config", "model_config"): "flexbert.model.config_check",
    ("flexbert.config", "validate_model_config"): "flexbert.model.config_check",
    ("flexbert.train.callbacks", "MetricsJSONL"): "flexbert.runtime.metrics_file",
    ("flexbert.train.callbacks", "read_metrics"): "flexbert.runtime.metrics_file",
    ("flexbert.train.callbacks", "PEAK_FLOPS"): "flexbert.runtime.perf",
    ("flexbert.train.callbacks", "device_peak_flops"): "flexbert.runtime.perf",
    ("flexbert.train.callbacks", "flops_per_token"): "flexbert.runtime.perf",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path is removed in FlexBERT {REMOVED_IN}",
                  FutureWarning, stacklevel=4)


def moved_attribute(module: str, name: str):
    """For a module's `__getattr__`: the moved name, with a warning; AttributeError otherwise."""
    target = ATTRIBUTES.get((module, name))
    if target is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    _warn(f"{module}.{name}", f"{target}.{name}")
    return getattr(importlib.import_module(target), name)


class _SplitModule(types.ModuleType):
    """An old module whose code now lives in several modules: names are found in order."""

    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name, f"moved to {', '.join(targets)}")
        self._targets = [importlib.import_module(t) for t in targets]

    def __getattr__(self, name: str):
        for module in self._targets:
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, old: str, target: str | tuple[str, ...]):
        self.old, self.target = old, target

    def create_module(self, spec):
        targets = (self.target,) if isinstance(self.target, str) else self.target
        _warn(self.old, " + ".join(targets))
        if len(targets) == 1:
            return importlib.import_module(targets[0])
        return _SplitModule(self.old, targets)

    def exec_module(self, module) -> None:
        pass  # the target module already ran


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(fullname, MODULES[fullname]))


def install() -> None:
    """Put the alias finder first, so an old name never reaches the file system."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
