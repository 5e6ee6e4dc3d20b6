"""How the model is compiled: the torch.compile options every compiled path uses (Composer's
compile_config for the trainer, FlexAttention's kernel), so they are chosen in one place."""

from __future__ import annotations

import functools
from typing import Any, Callable


def compile_options() -> dict[str, Any]:
    """torch.compile options for a model fed by the packed loader (Composer's compile_config).

    Every batch brings new token, document and masked-token counts, so those sizes are symbolic
    from the first compile (dynamic=True). Static shapes gave one graph per new count (36 graphs
    over 12 steps), dynamo's automatic dynamic shapes one more graph each time another size first
    changed (4). Duck sizing must be off as well (`without_duck_shapes`, around the compiled
    calls): it ties sizes that happen to be equal in the first batch (a one-row batch's token
    count and the row length), and the next batch then recompiles. With both, one graph serves
    every batch. Nothing here changes process-wide state.
    """
    return {"dynamic": True}


def without_duck_shapes(fn: Callable) -> Callable:
    """`fn` (a compiled callable) run with torch's duck sizing off for its own calls only.

    Duck sizing is a torch.fx config read when dynamo starts tracing (its ShapeEnv), so the
    setting must be in force around each call that may trace; `patch` restores it after."""
    import torch.fx.experimental._config as fx_config

    if not hasattr(fx_config, "use_duck_shape"):
        return fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with fx_config.patch(use_duck_shape=False):
            return fn(*args, **kwargs)

    return run


def scope_compiled_forward(module: Any) -> None:
    """After Composer compiled `module` (it replaces `module.forward` with dynamo's wrapper), run
    that forward without duck sizing (`without_duck_shapes`)."""
    module.forward = without_duck_shapes(module.forward)
