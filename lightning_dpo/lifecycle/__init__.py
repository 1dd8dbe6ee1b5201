"""A training run's life, above the callbacks it wires and the report it writes: run.py (lock, plan,
attempt, fit, the end-of-run work) and summary.py (the terminal summary). train.py builds the
objects; this package runs them."""
