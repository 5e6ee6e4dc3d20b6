"""Name -> implementation lookup for every swappable component family, all declared here.

A YAML config names components by string; this is the one place those strings are resolved, so a
typo fails with the list of allowed names instead of deep inside a module. Each family is declared
below with its constructor contract (what an entry is called with and returns), so a plugin
author reads one file. The built-in entries register themselves from the module named above each
family; importing `flexbert.model` fills the model families and `flexbert.train` the training
ones (plugins: flexbert.plugins).
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named family of interchangeable implementations.

    `contract` documents, once, what every entry is called with and must return; `flexbert
    components` prints it next to the entries so a plugin author knows what to write.
    """

    def __init__(self, family: str, contract: str):
        self.family = family
        self.contract = contract
        self._entries: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str | None = None) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} registry already has an entry named {name!r}")
            self._entries[name] = obj
            text = doc if doc is not None else (getattr(obj, "__doc__", None) or "")
            self._docs[name] = first_sentence(text)
            return obj

        return add

    def get(self, name: str, path: str | None = None) -> T:
        """Look up `name`; `path` is the config key it came from, quoted in the error."""
        if name not in self._entries:
            where = f"{path}: " if path else ""
            raise ValueError(
                f"{where}unknown {self.family} {name!r}; allowed: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self, name: str) -> str:
        return self._docs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def first_sentence(doc: str) -> str:
    """A docstring's first sentence, whole even when it wraps over several lines (its first
    line alone can stop mid-sentence); the whole first paragraph when it has no full stop."""
    import re

    paragraph = " ".join(re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0].split())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", paragraph, maxsplit=1)[0]


ALL: dict[str, Registry] = {}


def new_registry(family: str, contract: str) -> Registry:
    """Create a registry and list it for `flexbert components`."""
    registry: Registry = Registry(family, contract)
    ALL[family] = registry
    return registry


# ---- model families (flexbert.model fills them) ----

# built-in entries: flexbert/model/activations.py
ACTIVATIONS = new_registry("activation", "entry() -> nn.Module applying the activation elementwise")

# built-in entries: flexbert/model/init.py
INITS = new_registry("init", "entry(model: nn.Module, cfg: ModelConfig) -> None, in place")

# built-in entries: flexbert/model/attention/layout.py
PADDINGS = new_registry(
    "padding", "entry: object with `layout` ('padded' | 'unpadded'); the layout the encoder runs in"
)

# built-in entries: flexbert/model/norm.py
NORMS = new_registry("norm", "entry(dim: int, cfg: NormConfig) -> nn.Module over the last dim")

# built-in entries: flexbert/model/mlp.py
MLPS = new_registry("mlp", "entry(cfg: ModelConfig) -> nn.Module mapping [..., D] -> [..., D]; "
                           "input projection `Wi`, output projection `Wo`")

# built-in entries: flexbert/model/embeddings.py
EMBEDDINGS = new_registry(
    "embeddings", "entry(cfg: ModelConfig) -> nn.Module with forward(input_ids, position_ids, "
                  "position) -> x and the token table as `tok_embeddings`")

# built-in entries: flexbert/model/attention/rotary.py
POSITIONS = new_registry(
    "position", "entry(cfg: ModelConfig) -> nn.Module with embed(x, position_ids), "
                "prepare(position_ids) -> cache, rotate(q, k, cache, is_global) -> (q, k)")

# built-in entries: flexbert/model/attention/kernels.py
KERNELS = new_registry(
    "attention kernel",
    "KernelSpec(fn(q, k, v, layout, window, dropout_p) -> out, layouts, supports_dropout, "
    "available() -> str | None reason it cannot run)",
)

# built-in entries: flexbert/model/attention/__init__.py
ATTENTIONS = new_registry(
    "attention", "entry(cfg: ModelConfig, layer_index: int) -> nn.Module with "
                 "forward(x, layout, position, position_cache) -> x; projections `Wqkv`, `Wo`")

# built-in entries: flexbert/model/blocks.py
LAYERS = new_registry(
    "layer", "entry(cfg: ModelConfig, layer_index: int) -> nn.Module with forward(x, layout, "
             "position, position_cache) -> x; children `attn_norm`, `attn`, `mlp_norm`, `mlp`")

# built-in entries: flexbert/model/pooling.py
POOLINGS = new_registry(
    "pooling", "entry(hidden_T [T, D], cu_seqlens [N+1]) -> [N, D], one row per document")

# ---- training families (flexbert.train fills them) ----

# built-in entries: flexbert/train/optim.py
OPTIMIZERS = new_registry(
    "optimizer",
    "fn(param_groups, lr, betas, eps, weight_decay, **extra) -> torch.optim.Optimizer; "
    "weight decay must be decoupled from the LR",
)

# built-in entries: flexbert/train/schedules.py
SCHEDULERS = new_registry(
    "scheduler",
    "cls(**scheduler_config_without_name) -> ComposerScheduler; called as sched(state, ssr) and "
    "returns the LR multiplier (1.0 = the optimizer's lr)",
)

# built-in entries: flexbert/train/registries.py
CALLBACKS = new_registry(
    "callback", "entry(**yaml_mapping) -> composer.core.Callback; under `callbacks.NAME:` in a recipe")

# built-in entries: flexbert/train/registries.py
ALGORITHMS = new_registry(
    "algorithm", "entry(**yaml_mapping) -> composer.core.Algorithm; under `algorithms.NAME:` in a "
    "recipe")

