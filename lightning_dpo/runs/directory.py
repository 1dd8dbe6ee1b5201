"""One run directory: the public contract's paths, detection, status, lock, archive, and the models.

Every reader and writer of a run directory goes through `RunDirectory` (training writes it; `evaluate`,
`analyze`, `report`, `compare` and `plot` read it), so what a run directory is and holds is said once:

| path                          | what                                                                 |
|-------------------------------|----------------------------------------------------------------------|
| `.hydra/`                     | the attempt's config (and `attempts/<NNN>-<time>/` for every attempt) |
| `status.json`                 | running / completed / interrupted / failed (strict JSON)             |
| `.lightning_dpo.lock`         | held while a run uses the directory (names the holder)               |
| `train.log`                   | every log line of every attempt, and the summary                     |
| `checkpoints/`                | `last.ckpt`, `best-step_*.ckpt`                                      |
| `hf_model/`, `hf_model_best/` | the final and the best policy (`save_pretrained`)                    |
| the measurements              | `metrics.csv`, `dynamics/`, `probe.safetensors`, `probes/`, `eval/`, `toxicity_eval.csv`, `plots/`, `report.html` |
| the analyses                  | `analysis/<time>/`, `evaluation/<time>/` (the commands run on the run) |
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from lightning_dpo.model.loading import save_pretrained
from lightning_dpo.utils.errors import ConfigError, OutputError
from lightning_dpo.utils.io import (
    atomic_directory,
    atomic_write_text,
    ensure_writable_dir,
    strict_json_value,
)

log = logging.getLogger(__name__)

LOCK_FILE = ".lightning_dpo.lock"
STATUS_FILE = "status.json"
# A run's outputs: a directory holding any of these holds a run (`.hydra/`, `status.json` and
# `train.log` alone are the record of an attempt that produced nothing, which a new run may replace).
RUN_OUTPUTS = (
    "metrics.csv",
    "checkpoints",
    "dynamics",
    "probe.safetensors",
    "probes",
    "toxicity_eval.csv",
    "eval",
    "hf_model",
    "hf_model_best",
    "adapter",
    "plots",
    "report.html",
    "analysis",
    "evaluation",
    "wandb",
    "wandb_run_id.txt",
)
ATTEMPT_RECORD = (".hydra", STATUS_FILE, "train.log")
# status.json is written padded to this size, so that a full disk can still record `failed` in place
STATUS_RESERVE = 4096
RUN = "run"  # the value of a command's setting that takes it from the run


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- paths --------------------------------------------------------------------------------------
    @property
    def hydra_dir(self) -> Path:
        return self.path / ".hydra"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def status_file(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def log_file(self) -> Path:
        return self.path / "train.log"

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    # -- detection ----------------------------------------------------------------------------------
    @classmethod
    def find(cls, source: Any) -> RunDirectory | None:
        """The run directory `source` names (it holds hf_model/, metrics.csv or .hydra/config.yaml), or None."""
        if source is None:
            return None
        path = Path(str(source)).expanduser()
        return cls(path) if cls.is_run(path) else None

    @staticmethod
    def is_run(path: Path) -> bool:
        return path.is_dir() and any((path / p).exists() for p in ("hf_model", "metrics.csv", ".hydra/config.yaml"))

    def outputs(self) -> list[str]:
        """The run outputs this directory holds (empty: no run has produced anything here)."""
        return [name for name in RUN_OUTPUTS if (self.path / name).exists()]

    # -- status -------------------------------------------------------------------------------------
    def read_status(self) -> dict[str, Any]:
        try:
            value = json.loads(self.status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def status(self) -> str | None:
        return self.read_status().get("status")

    def write_status(self, status: str, **extra: Any) -> None:
        """status.json, atomically and padded to STATUS_RESERVE bytes; when the disk is full, the
        new status is written over the old one in place (the reserved bytes need no new space)."""
        record = strict_json_value({"status": status, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **extra})
        text = json.dumps(record, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"
        try:
            atomic_write_text(self.status_file, text.ljust(STATUS_RESERVE))
        except OutputError as exc:
            if exc.errno != errno.ENOSPC or not self.status_file.exists():
                raise
            self._write_status_in_place(record)

    def _write_status_in_place(self, record: dict[str, Any]) -> None:
        size = self.status_file.stat().st_size
        text = json.dumps(record, sort_keys=True, default=str)
        if len(text.encode()) > size and "error" in record:  # keep the status, cut the message
            room = size - len(json.dumps({**record, "error": ""}, sort_keys=True).encode()) - 4
            record = {**record, "error": str(record["error"])[: max(0, room)] + "..."}
            text = json.dumps(record, sort_keys=True, default=str)
        data = text.encode().ljust(size)[:size]
        with open(self.status_file, "r+b") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    # -- the lock -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[RunLock]:
        """Create the directory, prove it writable, and take the exclusive lock (rank 0 only; other
        ranks share rank 0's). Nothing in the directory changes until `RunLock.hold` names the holder."""
        ours = not self.path.exists() or _made_by_this_process(self.path)  # Hydra made it, or we do now
        ensure_writable_dir(self.path, "run directory (paths.output_dir)")
        if not _is_rank_zero():
            yield RunLock(self, None, created=False)
            return
        created = ours and not self.lock_file.exists()
        handle = open(self.lock_file, "a+")  # noqa: SIM115 (held open as long as the lock is)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise OutputError(
                    f"run directory {self.path} is in use by another run ({holder}); wait for it, or choose "
                    "another directory (hydra.run.dir=...)"
                ) from None
            yield RunLock(self, handle, created)
        finally:
            handle.close()  # closing releases the lock

    # -- archive and clean-up ------------------------------------------------------------------------
    def archive(self, names: list[str]) -> Path:
        """Move `names` (outputs of an earlier attempt) to previous/<time>/, nothing deleted."""
        archive = self.path / "previous" / time.strftime("%Y%m%d-%H%M%S")
        archive.mkdir(parents=True)
        for name in names:
            if (self.path / name).exists():
                (self.path / name).rename(archive / name)
        return archive

    def remove_if_empty(self) -> bool:
        """Remove the directory if nothing is in it (a run refused before it wrote anything)."""
        try:
            self.path.rmdir()
            return True
        except OSError:
            return False

    # -- models -------------------------------------------------------------------------------------
    def export_model(self, policy: Any, tokenizer: Any, name: str = "hf_model", record: dict[str, Any] | None = None) -> Path:
        """A plain `save_pretrained` folder of the policy and its tokenizer (+ `lightning_dpo.json`,
        where it came from), swapped in atomically."""

        def fill(tmp: Path) -> None:
            save_pretrained(policy, tmp)
            tokenizer.save_pretrained(tmp)
            if record is not None:
                (tmp / "lightning_dpo.json").write_text(json.dumps(record, indent=2) + "\n")

        target = self.path / name
        atomic_directory(target, fill)
        return target

    def model_dir(self) -> tuple[Path, str]:
        """The model to analyse: the best checkpoint's export when there is one, else the final model."""
        best = self.path / "hf_model_best"
        if best.is_dir():
            info = _json(best / "lightning_dpo.json")
            what = (
                f"the best checkpoint by {info.get('monitor', 'val/loss')} (step {info.get('step', '?')})"
                if info
                else "the best checkpoint"
            )
            return best, f"{best} ({what})"
        final = self.path / "hf_model"
        if final.is_dir():
            return final, f"{final} (the final model: the run kept no best checkpoint)"
        raise ConfigError("model.name_or_path", f"{self.path} holds no model (hf_model/ is written when training completes)")

    # -- what the run recorded, for the commands that analyse it ---------------------------------------
    def setting(self, key: str) -> Any:
        """A setting of the run's last attempt (resolved where recorded)."""
        for name in ("config.resolved.yaml", "config.yaml"):
            path = self.hydra_dir / name
            if path.is_file():
                try:
                    return OmegaConf.select(OmegaConf.load(path), key, throw_on_resolution_failure=False)
                except Exception:
                    continue
        return None

    def base_model(self) -> dict[str, Any]:
        """How the run loaded its starting model: name_or_path (and gguf_file, tokenizer)."""
        value = self.setting("model.name_or_path")
        if not value:
            raise ConfigError("model.name_or_path", f"{self.path} does not record its base model: give model.name_or_path")
        return {"name_or_path": str(value), "gguf_file": self.setting("model.gguf_file"), "tokenizer": self.setting("model.tokenizer")}

    def file(self, relative: str, key: str) -> str:
        path = self.path / relative
        if not path.is_file():
            raise ConfigError(key, f"'{RUN}' takes it from the run, but {path} does not exist (the run did not measure it): give {key}")
        return str(path)

    def eval_meta(self, key: str) -> dict[str, Any]:
        return _json(Path(self.file("eval/meta.json", key)))

    def scorer_config(self) -> dict[str, Any]:
        return dict(self.eval_meta("scorer")["scorer_config"])

    def analysis_dir(self, kind: str) -> Path:
        """Where a command run on this run writes by default: <run>/<kind>/<time>/ (kind: analysis, evaluation)."""
        return self.path / kind / time.strftime("%Y-%m-%d_%H-%M-%S")


class RunLock:
    """The lock on a run directory, held by this process; `hold` records the holder once the run
    is accepted (a refused run leaves the lock file, like everything else, as it was)."""

    def __init__(self, run: RunDirectory, handle: Any, created: bool):
        self.run, self.handle, self.created = run, handle, created

    def hold(self) -> None:
        if self.handle is None:
            return
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{' '.join(shlex.quote(a) for a in sys.argv)}\n"
        )
        self.handle.flush()

    def release_refused(self) -> None:
        """After a refusal: remove the lock file and the directory if this process created them (and
        the directory holds nothing else): a user's own folder stays."""
        if self.handle is not None and self.created:
            self.run.lock_file.unlink(missing_ok=True)
            self.run.remove_if_empty()


# when this process started (as far as the project can tell: when it was imported, before Hydra
# creates the run directory): a directory created after it was made by this run
PROCESS_START = time.time()


def _made_by_this_process(path: Path) -> bool:
    try:
        return path.is_dir() and not any(path.iterdir()) and path.stat().st_ctime >= PROCESS_START - 1
    except OSError:
        return False


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def command_output(out: str | None, kind: str, source: Any) -> Path:
    """Where a command writes: `out` when given; else under the run it reads (<run>/<kind>/<time>/,
    linked from the run's report), or outputs/<kind>/<date>/<time>/ for a model that is not a run."""
    if out:
        return ensure_writable_dir(out, "output directory (out)")
    run = RunDirectory.find(source)
    folder = run.analysis_dir(kind) if run is not None else Path("outputs") / kind / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")
    return ensure_writable_dir(folder, "output directory (out)")


def require_run(record: RunDirectory | None, key: str, source: Any) -> RunDirectory:
    if record is None:
        raise ConfigError(key, f"'{RUN}' takes it from a training run directory, but {source} is not one: give {key} yourself")
    return record
