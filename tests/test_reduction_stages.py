"""The reduce run's stages: methods declare what they can do, the stages ask them (never a method's name), the
export is assembled on the export side, and every setting of ``reduce`` is declared once."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ctreduce
from ctreduce import config
from ctreduce.io.discover import scan
from ctreduce.reduction import backends, measures, plan
from ctreduce.reduction.leader import Selection
from ctreduce.reduction.measures import HashMeasure, Selector

SRC = Path(__file__).resolve().parents[1] / "src" / "ctreduce"
# Where methods are named: the registry and its measures (and config.py, the settings with their help texts).
REGISTRY = {"reduction/measures.py", "reduction/similarity.py", "reduction/deepnet.py"}


def test_methods_declare_their_capabilities():
    methods = {**measures.SELECTORS, **measures.available_measures()}
    assert {name: cls.chunkable for name, cls in methods.items()} == {
        "all": True, "every-n": True, "hash": True, "ssim": False, "mi": False, "deepnet": False}
    assert [name for name, cls in methods.items() if cls.loads_network] == ["deepnet"]
    assert config.SELECTORS == tuple(measures.SELECTORS)  # the settings' selectors are the registry's


def _name_branches(path: Path, names: set[str]) -> list[str]:
    """Every comparison with a method's name, tuple of method names, or use of ``config.SELECTORS`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            constants = [c for side in sides for c in ast.walk(side) if isinstance(c, ast.Constant)]
            if any(c.value in names for c in constants if isinstance(c.value, str)):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} compares with a method name")
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
            if any(isinstance(e, ast.Constant) and e.value in names for e in node.value.elts):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} lists method names")
        elif isinstance(node, ast.Name) and node.id == "SELECTORS":
            found.append(f"{path.relative_to(SRC)}:{node.lineno} uses config.SELECTORS")
    return found


def test_the_stages_ask_a_method_what_it_can_do_never_its_name():
    """Chunked reading, Ray actors, preflight, targets and the one-pass export follow the declarations: a method
    registered from outside gets them without a branch in the run."""
    names = set(measures.method_names())
    modules = [p for p in (*(SRC / "reduction").glob("*.py"), *(SRC / "exporting").glob("*.py"), SRC / "cli.py")
               if str(p.relative_to(SRC)) not in REGISTRY]
    assert [line for path in modules for line in _name_branches(path, names)] == []


class _Toy(HashMeasure):
    """The hash measure under another name, with the capability under test."""

    name = "toy"


@pytest.mark.parametrize("chunkable", [True, False])
def test_a_few_large_series_are_read_in_chunks_when_the_method_says_so(tmp_path, monkeypatch, chunkable):
    from ctreduce.sample_data.phantom import make_phantom, write_dicom_series

    hu, spacing = make_phantom(n_slices=40, size=32, slice_thickness=1.0, seed=3)
    write_dicom_series(hu, spacing, tmp_path / "in" / "ct", seed=3)
    monkeypatch.setattr(_Toy, "chunkable", chunkable)
    monkeypatch.setitem(measures.MEASURES, "toy", _Toy)
    volumes = scan([tmp_path / "in"]).volumes
    assert backends.chunkable(volumes, plan.settings(method="toy"), workers=2) is chunkable
    assert not backends.chunkable(volumes, plan.settings(method="toy"), workers=1)  # as many workers as series


class _FirstOnly(Selector):
    """A selector registered from outside the package: the first slice of each volume."""

    name = "first-only"

    def params(self) -> dict[str, Any]:
        return {}

    def select(self, n_slices: int) -> Selection:
        index = np.arange(n_slices, dtype=np.int64)
        return Selection(index == 0, np.zeros(n_slices, dtype=np.int64), np.full(n_slices, np.nan))


def test_a_selector_registered_from_outside_runs_end_to_end(archive, tmp_path, monkeypatch):
    monkeypatch.setitem(measures.SELECTORS, "first-only", _FirstOnly)
    result = ctreduce.reduce(archive, tmp_path / "run", method="first-only", export="npy", export_size=16)
    manifest = result.manifest
    assert manifest.loc[manifest["kept"], "slice_index"].tolist() == [0, 0, 0, 0]
    assert manifest["threshold"].isna().all() and manifest["distance"].isna().all()
    assert result.summary["export"]["slices"] == 4
    with pytest.raises(ValueError, match="'first-only' takes no target fraction"):
        ctreduce.reduce(archive, method="first-only", target_fraction=0.5)


def test_the_run_writes_export_parts_and_the_export_side_assembles_them():
    """Only ``exporting`` writes a whole export (``ExportWriter``); the reduce run below it writes per-volume parts."""
    writers = [str(p.relative_to(SRC)) for p in (SRC / "reduction").glob("*.py") if "ExportWriter" in p.read_text()]
    assert writers == []
    assert "ExportWriter" in (SRC / "exporting" / "onepass.py").read_text()


def test_every_reduce_option_is_a_settings_field_declared_once():
    """The command line's options of ``reduce`` are the fields of ReduceConfig and RunOptions: names, defaults and
    help come from the fields (``--n``, ``--hash``, ``--size`` ... are their ``Cli`` flags)."""
    from ctreduce.cli import _reduce_command

    options = {p.name: p for p in _reduce_command().params if p.param_type_name == "option"}
    fields = {**config.ReduceConfig.model_fields, **config.RunOptions.model_fields}
    assert set(options) - {"out", "quiet"} == set(fields) - {"progress"}  # progress: --quiet on the command line
    for name, field in fields.items():
        if name != "progress":
            assert (options[name].default, options[name].help) == (field.default, field.description), name
    assert options["every_n"].opts == ["--n"] and options["export_size"].opts == ["--size"]
    assert config.ReduceConfig(thresholds="0.8, 0.6").thresholds == (0.8, 0.6)  # what --thresholds passes
    with pytest.raises(ValueError, match="--thresholds must be comma-separated numbers, got '1,x'"):
        config.ReduceConfig(thresholds="1,x")
