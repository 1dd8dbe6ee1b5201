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


class RunInterrupted(LightningDPOError):
    """Training stopped on a signal after saving a resumable checkpoint."""

    def __init__(self, signum: int, step: int, command: str):
        import signal

        self.signum, self.step, self.command = signum, step, command
        super().__init__(f"stopped at step {step} on {signal.Signals(signum).name}; resume with: {command}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "ended by this signal"
