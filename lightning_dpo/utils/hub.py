"""Is the Hugging Face hub reachable? Asked before any download, so an offline machine fails in
seconds (with what to do) instead of retrying for half a minute."""

from __future__ import annotations

import os
import socket


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of retrying for half a minute."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
