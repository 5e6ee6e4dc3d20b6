"""FlexBERT runs on two profiles (docs/install.md): `requirements/pinned.txt` (torch 2.7,
transformers 4, numpy 2.1, huggingface_hub 0.x) and `requirements/current.txt` (torch 2.14,
transformers 5, numpy 2.4, huggingface_hub 1.x+). Code that uses an API one side of a pin lacks
must fall back to the other side's. These tests hold the table of such APIs to the code (a file
that uses one side names the other) and to the installed packages (the side the table says this
version has is the one it has), and pyproject.toml's bounds to both lock files. CI runs them in
both profiles; they cannot see a one-sided API that is missing from the table: the suite run on
both profiles is what catches those."""
import importlib
import importlib.metadata as md
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _has(module: str, *attrs: str) -> bool:
    try:
        obj = importlib.import_module(module)
    except ImportError:
        return False
    for attr in attrs:
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
    return True


def _spec(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _modernbert_has(attr: str) -> bool:
    from transformers import ModernBertConfig

    return getattr(ModernBertConfig(), attr, None) is not None


@dataclass(frozen=True)
class Shim:
    package: str                      # distribution whose version decides the side
    since: Optional[str]              # first version with `new` (None: either may be there)
    new: Callable[[], bool]           # the newer side's API is installed
    old: Callable[[], bool]           # the older side's API is installed
    uses: str                         # a file of ours that uses one side ...
    needs: str                        # ... names this, the other side or the refusal (the shim)
    where: str                        # the files holding the shim


SHIMS = {
    # transformers 5 keeps rope thetas in `rope_parameters`; 4 has global/local_rope_theta.
    "transformers-rope": Shim("transformers", "5", lambda: _modernbert_has("rope_parameters"),
                              lambda: _modernbert_has("global_rope_theta"),
                              "rope_parameters", "global_rope_theta", "flexbert/io/hf.py"),
    # huggingface_hub 1.x has one httpx client (close_session); 0.x pooled sessions.
    "hub-sessions": Shim("huggingface_hub", "1", lambda: _has("huggingface_hub.utils._http", "close_session"),
                         lambda: _has("huggingface_hub.utils._http", "reset_sessions"),
                         "reset_sessions", "close_session", "tests/test_recipe_phases.py"),
    # numpy 2 moved numpy.core to numpy._core (Composer's RNG state pickles name it).
    "numpy-core": Shim("numpy", "2", lambda: _spec("numpy._core.multiarray"),
                       lambda: _spec("numpy.core.multiarray"),
                       "numpy._core", "numpy.core", "flexbert/io/trust.py"),
    # torch.nn.attention.varlen arrived in torch 2.10; before it the kernel refuses by name.
    "torch-varlen": Shim("torch", "2.10", lambda: _spec("torch.nn.attention.varlen"),
                         lambda: not _spec("torch.nn.attention.varlen"),
                         "torch.nn.attention.varlen", "except ImportError:",
                         "flexbert/model/attention/kernels.py"),
    # sentence-transformers moved modules/losses/evaluation under sentence_transformer.
    "st-modules": Shim("sentence-transformers", None,
                       lambda: _spec("sentence_transformers.sentence_transformer.losses"),
                       lambda: _has("sentence_transformers", "losses"),
                       "sentence_transformers.sentence_transformer",
                       "from sentence_transformers import evaluation, losses, models",
                       "flexbert/finetune/retrieval.py"),
    # Composer 0.32.1's WandBLogger calls Run.get_url(); newer wandb only has the url property.
    "wandb-get-url": Shim("wandb", None, lambda: _has("wandb.sdk.wandb_run", "Run", "url"),
                          lambda: _has("wandb.sdk.wandb_run", "Run", "get_url"),
                          "Run.get_url", "self.url", "flexbert/train/builder.py"),
}


def _sources() -> dict[Path, str]:
    files = [ROOT / "train.py", *ROOT.glob("flexbert/**/*.py"), *ROOT.glob("data_prep/**/*.py"),
             *ROOT.glob("tests/*.py"), *ROOT.glob("bench/*.py")]
    return {p: p.read_text() for p in files if p.name != "test_pins.py"}


@pytest.mark.parametrize("name", sorted(SHIMS))
def test_one_sided_api_names_its_fallback(name):
    """Every file that uses the one-sided API also names the other side (or the refusal)."""
    shim = SHIMS[name]
    users = {p: s for p, s in _sources().items() if shim.uses in s}
    assert ROOT / shim.where in users, f"{shim.where} no longer uses {shim.uses!r}: update the table"
    bare = [str(p.relative_to(ROOT)) for p, s in users.items() if shim.needs not in s]
    assert not bare, f"{bare} use {shim.uses!r} ({name}) without {shim.needs!r}"


@pytest.mark.parametrize("name", sorted(SHIMS))
def test_installed_side_is_the_one_the_table_says(name):
    """The profile installed here has the side of each pin the table claims, so the shim's
    branch for it is the one the suite exercises; and at least one side is there at all."""
    shim = SHIMS[name]
    try:
        version = Version(md.version(shim.package))
    except md.PackageNotFoundError:
        pytest.skip(f"{shim.package} not installed")
    new, old = shim.new(), shim.old()
    assert new or old, f"{shim.package} {version} has neither side of {name}: the shim cannot work"
    if shim.since is not None:
        if version >= Version(shim.since):
            assert new, f"{shim.package} {version} lacks the API the table says arrived in {shim.since}"
        else:
            assert old and not new, f"{shim.package} {version}: the table's side for < {shim.since} is wrong"


def _pyproject_requirements() -> list[tuple[Requirement, str]]:
    """(requirement, its raw line) for the dependencies and every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    return [(Requirement(r), next(ln for ln in lines if f'"{r}"' in ln)) for r in reqs]


def _lock(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / name).read_text()
    return {_norm(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", text, re.M)}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("lock", ["pinned.txt", "current.txt"])
def test_pyproject_bounds_admit_the_lock(lock):
    """pyproject.toml states what FlexBERT itself supports; both profiles must be inside it
    (Composer's and Streaming's own caps are what current.txt overrides, not ours)."""
    locked = _lock(lock)
    for req, _ in _pyproject_requirements():
        assert _norm(req.name) in locked, f"requirements/{lock} lacks {req.name}: run requirements/lock.sh"
        version = locked[_norm(req.name)]
        assert req.specifier.contains(version, prereleases=True), \
            f"pyproject.toml's {req} excludes {req.name}=={version} from requirements/{lock}"


def test_every_upper_bound_says_why():
    for req, line in _pyproject_requirements():
        capped = any(s.operator in ("<", "<=", "==", "~=", "===") for s in req.specifier)
        if capped:
            assert "#" in line, f"pyproject.toml: {req} has an upper bound without a reason comment"


def test_installed_versions_are_inside_pyproject_bounds():
    """The environment running the suite is one pyproject.toml admits (a profile, not a mix)."""
    for req, _ in _pyproject_requirements():
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            continue  # an extra this environment did not install
        assert req.specifier.contains(version, prereleases=True), f"installed {req.name}=={version} vs {req}"
