"""The package's imports point one way (docs/architecture.md): a module imports only from its own
room or the rooms below it, deferred imports inside functions included, and nothing imports the
0.1 alias paths. Read from the source with `ast`, so a new upward import fails here before it
becomes a circle."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Lowest first. A module may import from its own room and from rooms earlier in this list.
ROOMS = [
    ("ground", ["data_prep", "flexbert", "flexbert._aliases", "flexbert.errors", "flexbert.registry",
                "flexbert.config", "flexbert.plugins", "flexbert.commands"]),
    ("data", ["flexbert.data"]),
    ("model", ["flexbert.model"]),
    ("runtime", ["flexbert.runtime"]),
    ("io", ["flexbert.io"]),
    ("finetune", ["flexbert.finetune"]),
    ("evaluation", ["flexbert.evaluation"]),
    ("train", ["flexbert.train"]),
    ("sweep", ["flexbert.sweep", "flexbert.interop"]),
    ("cli", ["flexbert.cli"]),
]
RANK = {prefix: i for i, (_, prefixes) in enumerate(ROOMS) for prefix in prefixes}


def modules() -> dict[str, Path]:
    found = {}
    for package in ("flexbert", "data_prep"):
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def rank(module: str) -> int:
    """The room of a module: its longest listed prefix."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in RANK:
            return RANK[prefix]
    raise AssertionError(f"{module} is in no room; add it to ROOMS")


def imported(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of a FlexBERT or data_prep module in the file, at any
    depth (function bodies included), plus importlib.import_module("...") with a literal."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            targets = [node.args[0].value]
        out += [(node.lineno, t) for t in targets
                if isinstance(t, str) and t.split(".")[0] in ("flexbert", "data_prep")]
    return out


def test_every_import_points_down():
    upward = []
    for name, path in MODULES.items():
        for line, target in imported(name, path):
            if target not in MODULES:
                upward.append(f"{path.relative_to(REPO)}:{line}: imports {target}, which is not "
                              "a module (an 0.1 alias path? use the new one)")
            elif rank(target) > rank(name):
                upward.append(f"{path.relative_to(REPO)}:{line}: {name} ({ROOMS[rank(name)][0]}) "
                              f"imports {target} ({ROOMS[rank(target)][0]}), a room above it")
    assert not upward, "\n".join(upward)


def test_no_import_circle_between_modules():
    """Within a room imports may go sideways, but never round in a circle (deferred ones too)."""
    graph = {name: {t for _, t in imported(name, path) if t in MODULES and t != name}
             for name, path in MODULES.items()}
    for name in list(graph):  # importing a.b.c runs a/__init__ and a/b/__init__ first
        graph[name] |= {t.rsplit(".", k)[0] for t in set(graph[name])
                        for k in range(1, t.count(".")) if t.rsplit(".", k)[0] != name
                        and not name.startswith(t.rsplit(".", k)[0] + ".")}
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    assert not circles, "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in circles)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_layering_check_catches_an_upward_import(tmp_path):
    """The check itself can fail: a model module importing train is reported."""
    path = tmp_path / "norm.py"
    path.write_text("def f():\n    from flexbert.train.builder import build_trainer\n")
    (line, target), = imported("flexbert.model.norm", path)
    assert (line, target) == (2, "flexbert.train.builder")
    assert rank(target) > rank("flexbert.model.norm")


def test_old_paths_still_import_with_a_warning():
    from flexbert import _aliases

    for old, new in _aliases.MODULES.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert any(issubclass(w.category, FutureWarning) and old in str(w.message)
                   for w in caught), old
        if isinstance(new, str):
            assert module is importlib.import_module(new), old
    with pytest.warns(FutureWarning, match="flexbert.model.config_check.load_model_config"):
        from flexbert.config import load_model_config
    from flexbert.model import load_model_config as new_home

    assert load_model_config is new_home
    from flexbert.layers.norm import NORMS  # a plugin written for 0.1 (warned once, above)
    from flexbert.registry import NORMS as declared

    assert NORMS is declared and "layernorm" in NORMS


def test_every_module_imports():
    """Each module imports on its own (a module no other test reaches still has to load)."""
    for name in MODULES:
        importlib.import_module(name)
