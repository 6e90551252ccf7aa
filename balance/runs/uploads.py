"""CSV files the dashboard may train on: uploads it stored itself, and a folder the server's owner named.

A dashboard visitor never names a server path: the path of a CSV reaches a run only through ``find_csv`` (files
in ``<home>/uploads/`` that ``save_upload`` wrote, and regular ``*.csv`` files directly in ``$BALANCE_DATA_DIR``).
A link names a file by its key (an upload's content hash, or a file's name in the data folder), which is matched
against those, never joined onto a path as it comes. Uploads are checked for size before a byte is written, named by
the SHA-256 of their content (the same file uploaded twice is stored once) and written atomically.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from balance.engine.data import MAX_CSV_BYTES
from balance.files import FileRefused, write_atomic

UPLOADS = "uploads"
DATA_DIR_ENV = "BALANCE_DATA_DIR"
_UPLOAD_KEY = re.compile(r"[0-9a-f]{16}")


def uploads_folder(home: Path) -> Path:
    return Path(home) / UPLOADS


def data_folder() -> Path | None:
    """The folder of CSV files the server's owner offers (``$BALANCE_DATA_DIR``), or None."""
    folder = os.environ.get(DATA_DIR_ENV, "")
    return Path(folder).expanduser() if folder else None


def save_upload(home: Path, data: bytes, limit: int = MAX_CSV_BYTES) -> str:
    """Store an uploaded CSV under its content hash in ``<home>/uploads``; returns its key (16 hex digits).

    ``FileRefused`` (naming neither a path nor the content) if it is larger than ``limit`` bytes.
    """
    if len(data) > limit:
        raise FileRefused(f"the file is {len(data) / 2**20:.1f} MiB, larger than the {limit / 2**20:.0f} MiB limit")
    key = hashlib.sha256(data).hexdigest()[:16]
    folder = uploads_folder(home)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key}.csv"
    if not target.is_file() or target.stat().st_size != len(data):
        write_atomic(target, data)
    return key


def folder_files() -> dict[str, Path]:
    """The data folder's CSV files by name: regular files (no links, pipes or devices) of at most
    ``MAX_CSV_BYTES``, directly in it; {} without a data folder."""
    folder = data_folder()
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name) if folder is not None else []
    except OSError:  # absent or unreadable: offers nothing
        return {}
    return {e.name: Path(e.path) for e in entries if e.name.lower().endswith(".csv") and _regular(e)}


def find_csv(home: Path, key: str) -> Path | None:
    """The file a key names: an upload (16 hex digits) or a data-folder file (its name); None if there is none.

    The key is matched, never joined onto a folder as it comes: a link cannot name any other file.
    """
    if _UPLOAD_KEY.fullmatch(key):
        path = uploads_folder(home) / f"{key}.csv"
        try:
            return path if path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_CSV_BYTES else None
        except OSError:
            return None
    return folder_files().get(key)


def key_of(home: Path, path: str) -> str:
    """The key of a CSV path the dashboard may read (``find_csv(home, key_of(home, path)) == path``), else ''."""
    p = Path(path)
    if p.parent == uploads_folder(home) and p.suffix == ".csv" and find_csv(home, p.stem) == p:
        return p.stem
    return next((name for name, f in folder_files().items() if f == p), "")


def _regular(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_size <= MAX_CSV_BYTES
    except OSError:
        return False
