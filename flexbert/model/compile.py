"""How the model is compiled: the torch.compile options every compiled path uses (Composer's
compile_config for the trainer, FlexAttention's kernel), so they are chosen in one place."""

from __future__ import annotations

from typing import Any


def compile_options() -> dict[str, Any]:
    """torch.compile options for a model fed by the packed loader (Composer's compile_config).

    Every batch brings new token, document and masked-token counts, so those sizes are symbolic
    from the first compile (dynamic=True). Static shapes gave one graph per new count (36 graphs
    over 12 steps), dynamo's automatic dynamic shapes one more graph each time another size first
    changed (4). Duck sizing is turned off (process-wide): it ties sizes that happen to be equal
    in the first batch (a one-row batch's token count and the row length), and the next batch
    then recompiles. With both, one graph serves every batch.
    """
    import torch.fx.experimental._config as fx_config

    if hasattr(fx_config, "use_duck_shape"):
        fx_config.use_duck_shape = False
    return {"dynamic": True}
