"""Before Composer opens anything: which checkpoint a run starts from, and whether it fits.

Composer unpickles `load_path` and the autoresume checkpoint itself; here they are read first
with `flexbert.checkpoint_reader` (safely), so an unsafe, truncated or empty file is refused with
its own name.
"""

from __future__ import annotations

from composer.utils import parse_uri

from flexbert.checkpoint_reader import UnreadableCheckpoint, load_checkpoint_state, model_state
from flexbert.train.config import Recipe


def check_load_path(recipe: Recipe) -> None:
    cfg = recipe.cfg
    if not cfg.load_path or parse_uri(cfg.load_path)[0]:
        return  # none, or an object-store file: Composer downloads it, the guarded loader reads it
    state = load_checkpoint_state(cfg.load_path, cfg.trust_checkpoint)
    if not any(k for k in model_state(state) if "inv_freq" not in k):
        raise UnreadableCheckpoint(f"{cfg.load_path}: load_path: the checkpoint holds no model "
                                   "weights (state.model is empty)")


def preflight(recipe: Recipe) -> None:
    """Every check that must pass before the Trainer is built."""
    check_load_path(recipe)
