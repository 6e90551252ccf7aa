"""CSV files for the dashboard: uploads stored by content hash, the owner's data folder, and nothing else.

No server path ever comes from a link: ``data.csv_path`` never enters or leaves a URL query, and a link's
``csv=<key>`` is matched against the stored uploads and the data folder, never joined onto a path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from balance.config import ConfigError, RunConfig, link_query
from balance.files import FileRefused
from balance.runs import uploads

CSV = b"x1,x2,y\n0.5,1,0\n1.5,0,1\n"


def test_an_upload_is_stored_once_by_its_content_hash(tmp_path: Path) -> None:
    key = uploads.save_upload(tmp_path, CSV)
    assert key == uploads.save_upload(tmp_path, CSV) and len(key) == 16
    path = uploads.find_csv(tmp_path, key)
    assert path == tmp_path / "uploads" / f"{key}.csv" and path.read_bytes() == CSV
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # a normal file, not mkstemp's 0600
    assert [p.name for p in (tmp_path / "uploads").iterdir()] == [f"{key}.csv"]
    assert uploads.key_of(tmp_path, str(path)) == key


def test_an_upload_over_the_limit_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(FileRefused, match="larger than") as info:
        uploads.save_upload(tmp_path, CSV + b"1,2,3\n" * 10, limit=len(CSV))
    assert "x1" not in str(info.value)  # never the content
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())


@pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/passwd", "0123456789abcdef/../x", "", "ABCDEF0123456789"])
def test_a_key_names_only_a_stored_upload(tmp_path: Path, key: str) -> None:
    uploads.save_upload(tmp_path, CSV)
    assert uploads.find_csv(tmp_path, key) is None
    assert uploads.key_of(tmp_path, "/etc/passwd") == ""


def test_the_data_folder_offers_only_its_own_regular_csv_files(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.csv").write_bytes(CSV)
    (folder / "notes.txt").write_text("x")
    (folder / "link.csv").symlink_to("/etc/passwd")
    os.mkfifo(folder / "pipe.csv")
    (folder / "sub.csv").mkdir()
    monkeypatch.setenv(uploads.DATA_DIR_ENV, str(folder))
    assert uploads.folder_files() == {"a.csv": folder / "a.csv"}
    assert uploads.find_csv(tmp_path, "a.csv") == folder / "a.csv"
    assert uploads.find_csv(tmp_path, "link.csv") is None and uploads.find_csv(tmp_path, "pipe.csv") is None
    assert uploads.key_of(tmp_path, str(folder / "a.csv")) == "a.csv"
    monkeypatch.delenv(uploads.DATA_DIR_ENV)
    assert uploads.folder_files() == {}


def test_a_link_never_carries_a_server_path() -> None:
    config = RunConfig().replace(**{"model.name": "mlp", "data.name": "csv", "data.csv_path": "/srv/data.csv"})
    assert "data.csv_path" not in config.to_query() and "/srv/data.csv" not in str(link_query(config))
    with pytest.raises(ConfigError, match=r"data\.csv_path: a link cannot set this"):
        RunConfig.from_query({"data.csv_path": "/etc/passwd"})
    lenient, problems = RunConfig.from_query({"data.csv_path": "/etc/passwd", "steps": "5"}, strict=False)
    assert lenient.data.csv_path == "" and lenient.steps == 5 and "a link cannot set this" in problems[0]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
