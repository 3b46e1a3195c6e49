"""Files that appear whole or not at all, through names nobody else can plant.

Temporary files are created exclusively (``O_CREAT | O_EXCL`` through `tempfile.mkstemp`, with
a random name), so a symlink or file planted under a guessable name is never followed or
overwritten; they are removed on any failure, so an error (a full disk, a directory where the
file belongs) leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def temp_for(path: Path) -> tuple[int, Path]:
    """An open, new, empty file next to ``path`` (random name, created exclusively)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp.")
    return fd, Path(tmp)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path``: temp file + fsync + rename, so a reader sees the old file or
    the new one, never a part. ``mode``: the file's permissions (default: 0666 less the umask,
    as ``open`` would give)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory, not a file name", str(path))
    fd, tmp = temp_for(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), (0o666 & ~umask()) if mode is None else mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
