"""Files from outside and files we write: read only regular files, with a size cap; write atomically.

Anything named by a user (a config, a sweep spec, an archive, a CSV) may be a FIFO (a read blocks forever), a
device (``/dev/zero`` never ends), a directory or a huge file. ``read_limited`` refuses all of those before reading
and never reads more than its cap, so a caller can state its limit once. ``write_atomic`` writes through a temporary
file in the target's folder and a rename (never half a file), with the permissions a plain ``open`` would give
(``mkstemp`` makes files private: 0600).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path


class FileRefused(ValueError):
    """A file that cannot be read as asked: missing, not a regular file, unreadable, or over its size cap.

    The message names the file as the caller gave it and says why; it never quotes the file's content.
    """


def check_regular(path: str | Path, limit: int, what: str = "file") -> int:
    """The size of ``path`` if it is a regular file of at most ``limit`` bytes; else ``FileRefused``."""
    try:
        info = os.stat(_expand(path))
    except FileNotFoundError:
        raise FileRefused(f"{what} {path}: cannot read it (no such file)") from None
    except ValueError:  # a NUL byte in the name
        raise FileRefused(f"{what} {path}: cannot read it (not a usable file name)") from None
    except OSError as exc:
        raise FileRefused(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise FileRefused(f"{what} {path}: is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused(f"{what} {path}: not a regular file (a pipe, socket or device is never read)")
    if info.st_size > limit:
        raise FileRefused(f"{what} {path}: {_size(info.st_size)}, larger than the limit of {_size(limit)}")
    return info.st_size


def read_limited(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (a file that grows past it is refused).

    The file is opened with O_NONBLOCK, so a FIFO swapped in after the check cannot block the open, then checked
    again on the open descriptor (what is read is what was checked).
    """
    check_regular(path, limit, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(_expand(path), flags)
    except OSError as exc:
        raise FileRefused(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise FileRefused(f"{what} {path}: not a regular file (a pipe, socket or device is never read)")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(f"{what} {path}: larger than the limit of {_size(limit)}")
    return data


def read_text_limited(path: str | Path, limit: int, what: str = "file") -> str:
    """``read_limited`` decoded as UTF-8 (``FileRefused`` if it is not)."""
    try:
        return read_limited(path, limit, what).decode("utf-8")
    except UnicodeDecodeError:
        raise FileRefused(f"{what} {path}: not a UTF-8 text file") from None


def write_atomic(path: str | Path, data: bytes | str | Callable[[str], None]) -> Path:
    """Write ``data`` (bytes, text, or a function that writes a file at the path it is given) to ``path``.

    Through a temporary file in the same folder and ``os.replace``: a reader sees the old file or the new one,
    never half of one. The new file gets the mode ``open`` would give it (0666 less the umask), not mkstemp's 0600.
    """
    target = Path(_expand(path))
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # owns fd from here: closed exactly once
            if not callable(data):
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if callable(data):
            data(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def _expand(path: str | Path) -> str:
    """``~`` expanded as the shell does; unlike ``Path.expanduser``, an unknown ``~user`` stays as it is."""
    return os.path.expanduser(str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"
