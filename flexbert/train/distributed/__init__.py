"""Multi-process glue: `trainer.fsdp` -> Composer's FSDP config, activation checkpointing, and
the gloo workaround that lets FSDP2 run on CPU."""
