"""Where a launch starts and what it keeps: the checkpoint saver, the launch plan for what
save_folder holds, checkpoint provenance, `model.init_from` and stale shared memory."""
