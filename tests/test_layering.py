"""The package's layers: one ordered list, and no module imports a layer above its own (not even inside a
function, where the cycles of parts 1-10 hid)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ctreduce"

# These read the source files; under mutation testing (`make mutate`) those are mutmut's rewritten copies.
pytestmark = pytest.mark.skipif("MUTANT_UNDER_TEST" in os.environ, reason="reads the sources mutmut rewrote")

# Bottom to top: each package or top-level module may import only itself and what stands before it.
# docs/architecture.md says what each layer holds.
LAYERS = (
    "core",             # utilities and value types: the dHash, library versions, process pools, devices
    "config",           # every typed setting, no algorithm behind it
    "io",               # reading CT volumes and 2-D images; intensity policies (HU -> 8 bits)
    "sample_data",      # synthetic phantoms and the real sample CTs
    "tasks",            # downstream task data (specs, loaders, splits), without torch
    "store",            # every on-disk format, one owner each
    "backbones",        # the one backbone factory (DeepNet reduction, pre-training, fine-tuning)
    "reduction",        # hashes, measures, the greedy leader rule, the Hamming index, the reduce run
    "exporting",        # what goes into an export of a finished run
    "curate",           # duplicates across volumes, leakage into downstream data
    "report",           # the HTML report of a run folder
    "lightning_setup",  # the Lightning set-up pre-training and fine-tuning share
    "ssl",              # pre-training: SwAV, MoCo, SparK
    "downstream",       # fine-tuning, evaluation, the synthetic task
    "experiment",       # the paper's grid, stage by stage
    "cli",              # the command line
)


def _layer(module: str) -> str | None:
    """The layer of a ``ctreduce.*`` module name (None for the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imports(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every ctreduce module a file (or ``text`` as that file) imports, absolute or relative,
    at the top or inside a function; ``from ctreduce import x`` counts as ``ctreduce.x``."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(SRC.parent).parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [f"{module}.{alias.name}" for alias in node.names] if module == "ctreduce" else [module]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, m) for line, m in found if m == "ctreduce" or m.startswith("ctreduce.")]


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p != SRC / "__init__.py")


def _own_layer(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def upward_imports(files: dict[Path, str | None]) -> list[str]:
    """Every import of a layer above the importing file's own (``files``: path -> its text, None to read it),
    as ``file:line imports module (layer is above layer)``."""
    bad = []
    for path, text in files.items():
        own = LAYERS.index(_own_layer(path))
        for line, module in _imports(path, text):
            layer = _layer(module)
            if layer is None:
                bad.append(f"{path.relative_to(SRC)}:{line} imports the package root (its lazy API), not a module")
            elif layer not in LAYERS:
                bad.append(f"{path.relative_to(SRC)}:{line} imports {module}, in no layer")
            elif LAYERS.index(layer) > own:
                bad.append(f"{path.relative_to(SRC)}:{line} imports {module} ({layer} is above {_own_layer(path)})")
    return bad


def test_every_package_and_top_level_module_has_one_layer():
    top = {p.name.removesuffix(".py") for p in SRC.iterdir()
           if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").exists()}
    assert top == set(LAYERS), f"not in LAYERS: {sorted(top - set(LAYERS))}; gone: {sorted(set(LAYERS) - top)}"
    assert len(LAYERS) == len(set(LAYERS))


def test_the_architecture_page_lists_the_same_layers_in_the_same_order():
    page = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    assert tuple(re.findall(r"^\| `([a-z_]+)(?:/|\.py)` \|", page, flags=re.MULTILINE)) == LAYERS


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(dict.fromkeys(_modules())) == []


def test_an_import_inside_a_function_counts():
    """An upward import hidden in a function body (as curate's leakage once imported downstream) is found."""
    planted = SRC / "curate" / "leakage.py"
    text = planted.read_text() + "\n\ndef _planted():\n    from ..downstream.datasets import ImageDataset\n"
    bad = upward_imports({planted: text})
    assert len(bad) == 1 and bad[0].startswith("curate/leakage.py:") and "ctreduce.downstream.datasets" in bad[0]


def test_no_module_over_600_lines():
    long = {str(p.relative_to(SRC)): n for p in _modules() if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}


def test_config_loads_no_algorithm():
    allowed = {"ctreduce.core", "ctreduce.core.devices", "ctreduce.core.dhash", "ctreduce.core.plugins",
               "ctreduce.core.validation"}
    assert {m for _, m in _imports(SRC / "config.py")} <= allowed | {"ctreduce.config"}
    code = ("import sys; from ctreduce.config import ReduceConfig, PretrainConfig, FinetuneConfig; "
            "ReduceConfig(method='ssim', threshold=0.8); "
            "print([m for m in sys.modules if m.startswith('ctreduce.') and m != 'ctreduce.config'], "
            "'numpy' in sys.modules, 'torch' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    modules, numpy, torch = loaded.rsplit(" ", 2)
    # Settings are checked in a fraction of a second: nothing heavy loads with them.
    assert set(ast.literal_eval(modules)) <= allowed and numpy.strip() == torch.strip() == "False"


@pytest.mark.parametrize("module", ["ctreduce.core.dhash", "ctreduce.core.versions", "ctreduce.core.workers",
                                    "ctreduce.core.devices", "ctreduce.core.plugins", "ctreduce.core.validation"])
def test_the_lowest_layer_imports_nothing_of_ctreduce(module):
    path = SRC / Path(*module.split(".")[1:]).with_suffix(".py")
    assert _imports(path) == []
