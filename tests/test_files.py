"""balance.files: only regular files are read, never past their cap; writes are atomic with normal permissions."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from balance.files import FileRefused, read_limited, read_text_limited, write_atomic


def test_reads_a_regular_file_within_its_cap(tmp_path):
    path = tmp_path / "a.toml"
    path.write_bytes(b"steps = 3\n")
    assert read_limited(path, 100) == b"steps = 3\n"
    assert read_text_limited(path, 100) == "steps = 3\n"


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: os.mkfifo(p), "not a regular file"),
        (lambda p: p.write_bytes(b"x" * 101), "larger than the limit"),
        (lambda p: p.write_bytes(b"\xff\xfe"), "not a UTF-8 text file"),
    ],
)
def test_refuses_what_is_not_a_small_regular_file(tmp_path, make, why):
    path = tmp_path / "in"
    make(path)
    done = []
    # a FIFO must be refused at once, not block the reader: read in a thread and give it two seconds
    thread = threading.Thread(target=lambda: done.append(_refusal(path)), daemon=True)
    thread.start()
    thread.join(2)
    assert done, "reading blocked"
    assert why in done[0] and str(path) in done[0]


def test_devices_are_refused_without_reading():
    with pytest.raises(FileRefused, match="not a regular file"):
        read_limited("/dev/zero", 1 << 30, "archive")


def _refusal(path) -> str:
    try:
        read_text_limited(path, 100, "config file")
    except FileRefused as exc:
        return str(exc)
    return ""


def test_write_atomic_gives_normal_permissions_and_leaves_no_temporary(tmp_path):
    old = os.umask(0o022)
    try:
        target = write_atomic(tmp_path / "out.csv", "a,b\n")
        write_atomic(tmp_path / "f.bin", lambda p: Path(p).write_bytes(b"\x00"))
    finally:
        os.umask(old)
    assert target.read_text() == "a,b\n" and oct(target.stat().st_mode & 0o777) == "0o644"
    assert (tmp_path / "f.bin").read_bytes() == b"\x00"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin", "out.csv"]


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")

    def broken(path: str) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]
