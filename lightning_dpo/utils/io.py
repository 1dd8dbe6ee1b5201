"""Atomic file writes: a reader (or a crash) never sees a partial file.

Every writer in the project goes through these helpers: the bytes go to a temporary file in
the same directory, are flushed to disk, and replace the target with one `os.replace`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lightning_dpo.utils.errors import ConfigError, OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700 entries; outputs get the permissions a plain open() or mkdir()
# would give them (readable by colleagues on a shared cluster, as the user's umask allows)
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


def _describe_os_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return f"cannot write {path}: no space left on device"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: permission denied (is the output directory writable?)"
    return f"cannot write {path}: {exc.strerror or exc}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step.

    On any error the temporary file is removed and `path` keeps its previous content.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _FILE_MODE)
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)  # writers that replace the file (safetensors) create it 0600
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise output_error(path, exc) from exc
    except RuntimeError as exc:  # torch.save reports a full disk as "unexpected pos" / "file write failed"
        tmp_path.unlink(missing_ok=True)
        if _no_space(path.parent):
            raise output_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def output_error(path: Path, exc: OSError) -> OutputError:
    """An OutputError naming `path`, carrying the errno of `exc` (a full disk: errno.ENOSPC)."""
    error = OutputError(_describe_os_error(path, exc))
    error.errno = exc.errno
    return error


def _no_space(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def strict_json_value(obj: Any) -> Any:
    """`obj` with every NaN or infinity replaced by None (JSON has no such numbers: a bare NaN breaks
    strict parsers, jq and most other languages' readers)."""
    if isinstance(obj, dict):
        return {k: strict_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(v) for v in obj]
    if isinstance(obj, float) or (type(obj).__module__ == "numpy" and hasattr(obj, "dtype") and obj.dtype.kind == "f"):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (NaN and infinities written as null), atomically."""
    text = json.dumps(strict_json_value(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    buffer = io.StringIO()
    for row in rows:
        buffer.write(json.dumps(row, ensure_ascii=False) + "\n")
    atomic_write_text(path, buffer.getvalue())


def csv_text(fieldnames: list[str], rows: Iterable[dict], header: bool = True) -> str:
    """CSV lines ("\n"-terminated) of `rows`, keys outside `fieldnames` ignored."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def atomic_write_csv(path: str | os.PathLike, fieldnames: list[str], rows: Iterable[dict]) -> None:
    atomic_write_text(path, csv_text(fieldnames, rows))


def atomic_save(path: str | os.PathLike, save_fn: Callable[[Path], None]) -> None:
    """Call `save_fn(tmp_path)` and move the result into place atomically (torch.save, safetensors)."""
    with atomic_path(path) as tmp:
        save_fn(tmp)


def atomic_directory(path: str | os.PathLike, fill_fn: Callable[[Path], None]) -> None:
    """Build a directory with `fill_fn(tmp_dir)` and swap it in place of `path`.

    The old directory (if any) is moved aside first and deleted only after the new one is in
    place, so a crash leaves either the old or the new directory, never a half-written one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp_dir.chmod(_DIR_MODE)
    except OSError as exc:
        raise output_error(path, exc) from exc
    old = path.with_name(f".{path.name}.old")
    try:
        fill_fn(tmp_dir)
        _plain_permissions(tmp_dir)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp_dir, path)
    except OSError as exc:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise output_error(path, exc) from exc
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


_FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def check_file_name(name: str, key: str) -> str:
    """A config value used as a file or folder name: letters, digits, `_`, `-` and `.`, not starting
    with `.` (so it cannot climb out of its folder, make sub-folders or hide), at most 100 characters."""
    if not isinstance(name, str) or not _FILE_NAME.match(name) or len(name) > 100:
        raise ConfigError(
            key, f"{name!r} is used as a file name: use letters, digits, '_', '-' and '.' (not starting with '.'; at most 100 characters)"
        )
    return name


def _plain_permissions(folder: Path) -> None:
    """Every file and folder under `folder` as a plain open() or mkdir() would make it under the umask
    (save_pretrained writes its weights through safetensors, which creates files 0600)."""
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), _DIR_MODE)
        for name in files:
            os.chmod(os.path.join(root, name), _FILE_MODE)


def ensure_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Create `path` if needed and prove it is writable, with a clear error otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{what} {path} is not usable: {_describe_os_error(path, exc)}") from exc
    return path


def stable_safetensors(data: bytes) -> bytes:
    """A safetensors file whose header lists metadata and tensors in sorted order. The library keeps
    metadata in a hash map, so the same contents written by two processes differ in bytes; a run
    resumed after a signal must write the same files as one that was never stopped."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    ordered: dict[str, Any] = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(sorted(header.items()))  # each tensor's offsets into the data are unchanged
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """`tensors` (torch) as a safetensors file, its bytes a function of its contents only, atomically."""
    from safetensors.torch import save

    atomic_write_bytes(path, stable_safetensors(save(tensors, metadata=metadata)))
