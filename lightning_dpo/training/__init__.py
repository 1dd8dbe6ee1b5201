"""The training loop's plumbing around Lightning: step boundaries, the run directory, loggers, checkpoints."""
