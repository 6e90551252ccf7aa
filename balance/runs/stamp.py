"""The reproducibility stamp: which balance, which code and which libraries made a result. Torch-free.

``stamp()`` is a dict for a report, an export's metadata or a sweep summary; ``stamp_text()`` its one-line form for a
footer. The code hash is the run store's reuse key's (``balance.runs.reuse.code_version`` calls ``code_hash``: the
source of the config and engine layers and the loop), so a stamped result names the exact numbers-producing code.
Versions are read from the installed packages' metadata: nothing heavy (torch) is imported.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the balance package
# the code that decides a run's numbers (balance.runs.reuse keys its reused runs by this hash)
CODE = ("config", "engine", "runs/loop.py")
LIBRARIES = ("torch", "numpy")


@functools.cache
def code_hash() -> str:
    """12 hex digits of the SHA-256 of the source that computes the numbers (``CODE``: every module, in order)."""
    digest = hashlib.sha256()
    for part in CODE:
        for path in sorted((ROOT / part).rglob("*.py")) if (ROOT / part).is_dir() else [ROOT / part]:
            digest.update(path.relative_to(ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout balance runs from (with ``+dirty`` when it has changes), or None: an installed
    package, no git, or not a repository."""
    try:

        def git(*args: str) -> str:
            out = subprocess.run(
                ["git", *args], cwd=ROOT.parent, capture_output=True, text=True, timeout=5, check=True
            )  # fmt: skip
            return out.stdout.strip()

        if Path(git("rev-parse", "--show-toplevel")).resolve() != ROOT.parent:
            return None  # balance is installed inside some other repository: that commit says nothing
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "balance")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def stamp() -> dict[str, str | None]:
    """``{"balance", "commit", "code", "torch", "numpy", "python"}``: versions, the git commit (None when unknown)
    and the code hash."""
    return {
        "balance": _version("balance"),
        "commit": git_commit(),
        "code": code_hash(),
        **{name: _version(name) for name in LIBRARIES},
        "python": platform.python_version(),
    }


def stamp_text(values: dict[str, str | None] | None = None) -> str:
    """One line: 'balance 0.1.0 · commit 1a2b3c4d5e6f · code 0123456789ab · torch 2.13.0 · NumPy 2.4.6 · Python
    3.11.7'; a part that is not known is left out."""
    v = stamp() if values is None else values
    names = {"balance": "balance", "commit": "commit", "code": "code", "torch": "torch", "numpy": "NumPy",
             "python": "Python"}  # fmt: skip
    return " · ".join(f"{label} {v[key]}" for key, label in names.items() if v.get(key))
