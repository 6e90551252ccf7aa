"""The layers' import boundaries (STYLE rule 1, issue 13.5), checked on the code itself.

- Streamlit is imported only by ``balance/app/``, ``app.py`` and ``app_pages/`` (read from the source).
- Importing a layer in a fresh interpreter loads only what that layer may use: the config, the views, the store and
  the registry of laws never load torch; nothing outside the dashboard loads Streamlit (``sys.modules``).
- The package-level imports between balance's modules form no cycle (read from the AST; imports inside functions,
  which run later, are allowed to point anywhere).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "balance"
HEAVY = ("torch", "streamlit", "scipy")

# module -> what importing it must not load
FORBIDDEN = {
    "balance": HEAVY,
    "balance.config": HEAVY,
    "balance.config.presets": ("streamlit",),
    "balance.engine.laws": HEAVY,
    "balance.engine.theory": HEAVY,
    "balance.views.figures": HEAVY,
    "balance.views.sweeps": ("torch", "streamlit"),
    "balance.runs.store": HEAVY,
    "balance.runs.archive": HEAVY,
    "balance.runs.executor": ("torch", "streamlit"),
    "balance.runs.limits": HEAVY,
    "balance.cli": HEAVY,
    "balance.engine.engine": ("streamlit",),
    "balance.runs.loop": ("streamlit",),
    "balance.claims": ("streamlit",),
    "balance.lecture.steps": ("streamlit",),
    "balance.lecture.handout": ("streamlit",),
}


def _loaded(module: str) -> list[str]:
    code = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out)


@pytest.mark.parametrize("module", list(FORBIDDEN))
def test_a_layer_loads_only_what_it_may(module: str) -> None:
    loaded = set(_loaded(module))
    assert [name for name in FORBIDDEN[module] if name in loaded] == []


def test_only_the_dashboard_imports_streamlit() -> None:
    allowed = set((PACKAGE / "app").rglob("*.py"))
    offenders = [
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*.py")
        if p not in allowed and re.search(r"^\s*(import|from) streamlit", p.read_text(), re.M)
    ]
    assert offenders == []


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """balance modules imported at module level (not inside functions or ``if TYPE_CHECKING``)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import sub`` needs pkg.sub (pkg may still be initialising); ``from pkg import name``, pkg
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            ]
        found |= {n for n in names if n in modules}
    return found


def test_no_import_cycles() -> None:
    paths = {_module_of(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _top_level_imports(p, set(paths)) - {m} for m, p in paths.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, trail: list[str]) -> bool:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle.extend([*trail[trail.index(n) :], n] if n in trail else [m, n])
                return True
            if state.get(n) is None and visit(n, [*trail, n]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if state.get(m) is None and visit(m, [m]):
            break
    assert cycle == [], " -> ".join(cycle)


def test_the_boundary_check_sees_a_torch_import(tmp_path: Path) -> None:
    """The boundary check can fail: a module that imports torch is seen doing so."""
    (tmp_path / "leaky.py").write_text("import torch\n")
    code = "import sys; sys.path.insert(0, sys.argv[1]); import leaky; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
