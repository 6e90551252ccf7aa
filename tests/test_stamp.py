"""The reproducibility stamp: the same code hash as the run store's reuse key, versions, and no torch on import."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from balance.runs import stamp

ROOT = Path(__file__).resolve().parents[1]


def test_code_hash_is_the_reuse_keys_code_version() -> None:
    from balance.runs import reuse

    assert stamp.CODE == reuse.CODE
    assert stamp.code_hash() == reuse.code_version()
    assert len(stamp.code_hash()) == 12 and int(stamp.code_hash(), 16) >= 0


def test_stamp_has_versions_commit_and_code() -> None:
    s = stamp.stamp()
    assert set(s) == {"balance", "commit", "code", "torch", "numpy", "python"}
    assert s["balance"] == metadata.version("balance")
    assert s["torch"] == metadata.version("torch") and s["numpy"] == metadata.version("numpy")
    assert s["python"] == platform.python_version()
    if (ROOT / ".git").exists():  # a checkout (a worktree has a .git file): the commit is known
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        assert s["commit"] is not None and head.startswith(s["commit"].removesuffix("+dirty"))
    line = stamp.stamp_text(s)
    assert "\n" not in line and f"code {s['code']}" in line and f"torch {s['torch']}" in line
    assert stamp.stamp_text({**s, "commit": None}).count("commit") == 0  # unknown parts are left out


def test_importing_the_stamp_loads_no_torch() -> None:
    code = "import json, sys; from balance.runs import stamp; stamp.stamp(); print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    loaded = set(json.loads(out))
    assert not loaded & {"torch", "numpy", "pandas", "streamlit"}
