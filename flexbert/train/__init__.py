"""Training on Composer: recipe schema, model wrapper, optimizers, schedules, callbacks,
checkpoints. `flexbert.train.main.main` is what train.py runs."""
