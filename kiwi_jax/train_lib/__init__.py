"""Training library: trainer, train state, optimizers, checkpoints, logging."""
