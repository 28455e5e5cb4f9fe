"""The package's layers: who may import whom (seams that broke in parts 1-4)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ctreduce"


def _imports(path: Path) -> set[str]:
    """Every ctreduce module a file imports (absolute or relative), top-level or inside functions."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.update(f"{module}.{alias.name}" for alias in node.names)
            found.add(module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("ctreduce")}


@pytest.mark.parametrize("layer, forbidden", [
    ("io", ("ctreduce.reduction", "ctreduce.store", "ctreduce.ssl", "ctreduce.downstream")),
    ("store", ("ctreduce.reduction", "ctreduce.ssl", "ctreduce.downstream")),
])
def test_lower_layers_do_not_import_higher_ones(layer, forbidden):
    for path in sorted((SRC / layer).glob("*.py")):
        bad = sorted(m for m in _imports(path) if m.startswith(forbidden))
        assert not bad, f"{path.relative_to(SRC)} imports {bad}"


def test_config_imports_no_algorithm():
    assert _imports(SRC / "config.py") <= {"ctreduce.config"}, _imports(SRC / "config.py")
    code = ("import sys; from ctreduce.config import ReduceConfig, PretrainConfig, FinetuneConfig; "
            "ReduceConfig(method='ssim', threshold=0.8); "
            "print(sorted(m for m in sys.modules if m.startswith('ctreduce.') and m != 'ctreduce.config'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
