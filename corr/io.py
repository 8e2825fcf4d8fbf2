"""Atomic file writes and file hashing.

A result or checkpoint file is either the old complete file or the new complete file,
never a half-written one: data goes to a temporary file in the same folder, is flushed to
disk, and is renamed over the target (``os.replace`` is atomic on POSIX and Windows). A
process killed mid-write leaves the temporary file (:data:`TEMPORARY_NAME` matches its name;
:func:`remove_stale_temporaries` deletes them when a run continues in that folder).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from corr.errors import OutputError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path`` (``.<name>.<random>.tmp``), then
    rename it to ``path``. A file-system failure (disk full, no permission) is an
    :class:`corr.errors.OutputError` naming ``path``; the temporary file is removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        _remove(tmp)
        if isinstance(error, OutputError):
            raise
        hint = {errno.ENOSPC: "the disk is full; free space and rerun",
                errno.EDQUOT: "the disk quota is used up; free space and rerun"}.get(
            error.errno, "check that the folder exists and is writable, or choose another output folder")
        raise OutputError(f"{path}: cannot write ({error.strerror or error}); {hint}") from error
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The name of :func:`atomic_write`'s temporary files: ``.<name>.<8 random characters>.tmp``.
TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in ``folder`` (and below it
    with ``recursive``); returns them. Call it only where no other process is writing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    stale = [path for path in candidates if TEMPORARY_NAME.match(path.name) and path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    return atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` that never leaves a truncated file behind."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
