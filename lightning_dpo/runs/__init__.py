"""A run's directory on disk (the public contract): paths, detection, status, lock, models (directory.py);
a sweep's jobs (sweep.py)."""

from lightning_dpo.runs.directory import RUN, RunDirectory, require_run

__all__ = ["RUN", "RunDirectory", "require_run"]
