"""Name -> implementation lookup for every swappable component family.

A YAML config names components by string; this is the one place those strings are resolved, so a
typo fails with the list of allowed names instead of deep inside a module.
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
