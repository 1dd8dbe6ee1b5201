"""A quiet terminal: library chatter that is not the user's business, switched off through each
library's own settings (its progress-bar switch, a filter on its logger for named messages, one
targeted warning filter). Every other warning still shows.
"""

from __future__ import annotations

import logging
import os
import warnings

# logger -> the starts of the messages it need not print (all informational, none a warning)
CHATTER = {
    "lightning.pytorch.utilities.rank_zero": (
        "GPU available",
        "TPU available",
        "HPU available",
        "💡 Tip",
        "`Trainer.fit` stopped",
        "You are using a CUDA device",  # the matmul-precision hint: a setting of ours (trainer precision), not a problem
    ),
    "lightning.fabric.utilities.seed": ("Seed set to",),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not str(record.getMessage()).startswith(self.prefixes)


def quiet_libraries() -> None:
    """Idempotent; call once per process before the libraries start talking."""
    for name, prefixes in CHATTER.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
    try:  # transformers' bars: "Loading weights", "Writing model shards"
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:  # datasets' "Map"/"Generating split" bars (hub datasets, TRL)
        from datasets.utils import logging as datasets_logging

        datasets_logging.disable_progress_bar()
    except ImportError:
        pass
    # Lightning's own pytree helper uses an API that torch deprecated; nothing a user can change
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # ModelCheckpoint's note on a non-empty checkpoints/ folder: a resume finds its own checkpoints there
    # (the run-directory protocol refuses a fresh run in a folder that holds one)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # validation metrics are torchmetrics MeanMetrics: compute() already reduces them across processes
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\(.*sync_dist=True\)` when logging on epoch level")
    if _rank() > 0:  # several processes (ddp, fsdp): one copy of the project's messages, errors from every process
        logging.getLogger("lightning_dpo").setLevel(logging.ERROR)


def _rank() -> int:
    """This process's global rank as the launcher set it (torchrun/SLURM: RANK; Lightning's own launcher: LOCAL_RANK)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0
