"""Errors that a user can act on: each names the file, line or config key at fault."""


class LightningDPOError(Exception):
    """Base class for errors raised on purpose, with a message meant for the user."""


class ConfigError(LightningDPOError, ValueError):
    """An invalid configuration value. The message names the key and the accepted values."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


class DataError(LightningDPOError, ValueError):
    """Bad input data. The message names the file and, where there is one, the line."""

    def __init__(self, path: str, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class OutputError(LightningDPOError, OSError):
    """An output location that cannot be written (permissions, full disk)."""


class CheckpointError(LightningDPOError, RuntimeError):
    """A checkpoint that cannot be read."""


class NonFiniteError(LightningDPOError, FloatingPointError):
    """A NaN or infinite loss or gradient during training."""
