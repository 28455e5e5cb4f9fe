"""Extension points: a reduction measure, a pre-training method and an export format registered from outside the
package (tests/plugins/ctreduce_toy, no file of ctreduce changed) work end to end through the Python API and the
command line, reached by an entry point or by CTREDUCE_PLUGINS (docs/architecture.md, "Extending ctreduce")."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import ctreduce
from ctreduce.config import Optimiser, PretrainMethod, make_pretrain_config, register_pretrain_method
from ctreduce.reduction import measures
from ctreduce.store import export_formats
from ctreduce.store.export import ExportError, ExportStore
from ctreduce.store.run import RunFolder

PLUGINS = Path(__file__).parent / "plugins"
CTREDUCE = str(Path(sys.executable).with_name("ctreduce"))
TINY = {"preset": "cpu", "backbone": "resnet18", "input_size": 32, "epochs": 1, "batch_size": 8, "num_workers": 0}


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    from ctreduce.sample_data.phantom import make_phantom, write_nrrd

    root = tmp_path_factory.mktemp("ct")
    for seed in range(2):
        hu, spacing = make_phantom(n_slices=24, size=40, slice_thickness=2.5, seed=seed)
        write_nrrd(hu, spacing, root / f"p{seed}.nrrd")
    return root


@pytest.fixture
def toy(monkeypatch):
    """The plug-in imported in this process, as ``load_plugins`` imports it; its registrations removed after."""
    from ctreduce import config

    monkeypatch.syspath_prepend(str(PLUGINS))
    sys.modules.pop("ctreduce_toy", None)
    module = importlib.import_module("ctreduce_toy")
    yield module
    for registry in (measures.MEASURES, config._METHODS, export_formats._FORMATS):
        registry.pop("toy", None)
    for name in ("ctreduce_toy", "ctreduce_toy.ssl_method"):
        sys.modules.pop(name, None)


def test_the_three_registrations_run_end_to_end_through_the_public_api(toy, ct, tmp_path):
    # the measure: its scores decide which slices are kept, its parameters are recorded
    manifest = ctreduce.reduce(ct, tmp_path / "run", method="toy", threshold=3).manifest
    assert 0 < manifest["kept"].sum() < len(manifest)
    strict = ctreduce.reduce(ct, method="toy", threshold=0.5).manifest
    assert strict["kept"].sum() > manifest["kept"].sum()

    # the format: written, checked and read back as any export (the same slices as the PNG export holds)
    meta = ctreduce.export(tmp_path / "run", tmp_path / "toy", format="toy")
    assert (meta["format"], meta["size"], meta["slices"]) == ("toy", None, manifest["kept"].sum())
    ctreduce.export(tmp_path / "run", tmp_path / "png", format="png")
    ours, png = ExportStore.open(tmp_path / "toy"), ExportStore.open(tmp_path / "png")
    assert ours.index["file"].str.startswith("pgm/").all()
    assert len(ours.slices()) == len(png.slices()) == meta["slices"]
    for k in range(meta["slices"]):
        np.testing.assert_array_equal(ours.slices()[k], png.slices()[k])
    # reduce --export writes the same export in the same pass (the default part: the volume's uint8 slices)
    ctreduce.reduce(ct, tmp_path / "fused", method="toy", threshold=3, export="toy")
    fused = ExportStore.open(tmp_path / "fused" / "export")
    assert fused.index.equals(ours.index)
    assert [(tmp_path / "fused" / "export" / f).read_bytes() for f in fused.index["file"]] == \
        [(tmp_path / "toy" / f).read_bytes() for f in ours.index["file"]]
    # curation reads it as it reads png and npy
    from ctreduce.curate.leakage import pretrain_codes

    np.testing.assert_array_equal(pretrain_codes(tmp_path / "toy").codes, pretrain_codes(tmp_path / "png").codes)

    # the method: its section, presets and optimiser from the registration, trained from the toy export
    config = make_pretrain_config({**TINY, "method": "toy"})
    assert (config.toy.projection_dim, config.warmup_epochs) == (8, 0)  # the cpu preset's, as registered
    assert "toy" not in make_pretrain_config({"method": "swav"}).model_dump()  # recorded in its own runs only
    summary = ctreduce.pretrain(config, data=str(tmp_path / "toy"), out=str(tmp_path / "pre"))
    assert (summary["status"], summary["method"], summary["dataset_slices"]) == ("finished", "toy", meta["slices"])
    assert summary["optimizer"]["kind"] == "adamw" and summary["optimizer"]["weight_decay"] == 1e-4
    recorded = yaml.safe_load((tmp_path / "pre" / "config.yaml").read_text())
    assert recorded["toy"] == {"projection_dim": 8, "crop_scale": [0.5, 1.0]}
    assert (tmp_path / "pre" / "backbone.pt").is_file()


def test_a_registration_that_cannot_work_is_refused(toy):
    from pydantic import BaseModel

    class Settings(BaseModel):
        pass

    def method(name: str, optimiser: str = "sgd", **presets) -> PretrainMethod:
        return PretrainMethod(name, Settings, "x:Y", Optimiser(optimiser, 0.1, 0.0), **presets)

    with pytest.raises(ValueError, match="'toy' is taken"):
        register_pretrain_method(method("toy"))
    with pytest.raises(ValueError, match="'epochs' is taken"):
        register_pretrain_method(method("epochs"))
    with pytest.raises(ValueError, match="optimiser 'adam' is not one of lars, sgd, lamb, adamw"):
        register_pretrain_method(method("other", optimiser="adam"))
    with pytest.raises(ValueError, match="preset 'gpu' is not one of paper, cpu"):
        register_pretrain_method(method("other", presets={"gpu": {}}))

    class Npy(export_formats.NpyFormat):
        pass

    with pytest.raises(ValueError, match="export format name 'npy' is taken"):
        export_formats.register_export_format(Npy)
    with pytest.raises(ExportError, match="unknown export format 'tiff'; choose one of png, npy, toy"):
        export_formats.export_format("tiff")


def test_an_implementation_that_cannot_be_found_is_one_line(monkeypatch):
    from pydantic import BaseModel

    from ctreduce import config
    from ctreduce.ssl.pretrain import PretrainError, method_class

    class Settings(BaseModel):
        pass

    monkeypatch.setattr(config, "_METHODS", dict(config._METHODS))  # registrations of this test only
    for name, implementation in [("gone", "no_such_module:Method"), ("wrong", "ctreduce.ssl.swav:SwAVV"),
                                 ("plain", "ctreduce.config:PretrainConfig")]:
        register_pretrain_method(PretrainMethod(name, Settings, implementation, Optimiser("sgd", 0.1, 0.0)))
    with pytest.raises(PretrainError, match="^pre-training method 'gone': no module 'no_such_module' for its "):
        method_class("gone")
    with pytest.raises(PretrainError, match="^pre-training method 'wrong': ctreduce.ssl.swav has no 'SwAVV'$"):
        method_class("wrong")
    with pytest.raises(PretrainError, match="is not an SSLMethod subclass$"):
        method_class("plain")
    with pytest.raises(PretrainError, match="^method 'simclr' is not one of swav, moco, spark, gone, wrong, plain$"):
        method_class("simclr")


def cli(*args: str, env: dict[str, str], code: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([CTREDUCE, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CTREDUCE_THREADS": "1", **env})
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _path(*folders: Path) -> str:
    return os.pathsep.join([*map(str, folders), os.environ.get("PYTHONPATH", "")])


def test_the_variable_brings_the_plugin_to_every_command(ct, tmp_path):
    env = {"CTREDUCE_PLUGINS": "ctreduce_toy", "PYTHONPATH": _path(PLUGINS)}
    reduced = cli("reduce", str(ct), "--out", str(tmp_path / "run"), "--method", "toy", "--threshold", "3",
                  "--workers", "2", "--quiet", env=env)  # the worker processes find it too
    assert "2 volume(s) reduced, 0 failed" in reduced.stdout
    assert RunFolder(tmp_path / "run").settings()["method"] == "toy"
    exported = cli("export", str(tmp_path / "run"), "--out", str(tmp_path / "toy"), "--format", "toy", "--workers",
                   "2", "--quiet", env=env)
    assert f"to {tmp_path / 'toy'} (toy)" in exported.stdout
    trained = cli("pretrain", "--method", "toy", "--data", str(tmp_path / "toy"), "--out", str(tmp_path / "pre"),
                  *(f"{k}={v}" for k, v in TINY.items()), env=env)
    assert "toy resnet18: 1 epochs" in trained.stdout and (tmp_path / "pre" / "backbone.pt").is_file()

    # without the plug-in its names are unknown, and its export is named as a plug-in's
    plain = cli("export", str(tmp_path / "run"), "--out", str(tmp_path / "x"), "--format", "toy", env={}, code=2)
    assert plain.stderr == "error: unknown export format 'toy'; choose one of png, npy\n"
    unread = cli("pretrain", "--method", "swav", "--data", str(tmp_path / "toy"), "--out", str(tmp_path / "p2"),
                 env={}, code=2)
    assert unread.stderr.startswith(f"error: {tmp_path / 'toy'}: unknown export format 'toy'; choose one of png, npy "
                                    "(in export.json; a plug-in's format is known once its plug-in is loaded")

    broken = cli("reduce", str(ct), "--out", str(tmp_path / "r"), "--method", "toy",
                 env={"CTREDUCE_PLUGINS": "no_such_plugin"}, code=2)
    assert broken.stderr == ("error: plug-in 'no_such_plugin' (CTREDUCE_PLUGINS) cannot be loaded: "
                             "ModuleNotFoundError: No module named 'no_such_plugin'\n")
    assert not (tmp_path / "r").exists()


# Runs the CLI in a fresh interpreter and reports whether torch was imported by the time it exited.
_PROBE = """
import sys
from ctreduce.cli import app
try:
    app(sys.argv[1:], prog_name="ctreduce")
except SystemExit as exc:
    print(f"exit={exc.code} torch={'torch' in sys.modules}")
"""


def test_an_installed_package_brings_the_plugin_by_its_entry_point(ct, tmp_path):
    site = tmp_path / "site"
    dist = site / "ctreduce_toy-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ctreduce-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ctreduce.plugins]\ntoy = ctreduce_toy\n")
    env = {"PYTHONPATH": _path(site, PLUGINS)}
    cli("reduce", str(ct), "--out", str(tmp_path / "run"), "--method", "toy", "--quiet", env=env)
    assert RunFolder(tmp_path / "run").settings()["threshold"] == 8.0  # the measure's default

    # the method's settings are checked before torch loads, as the built-in ones: one line
    proc = subprocess.run([sys.executable, "-c", _PROBE, "pretrain", "--method", "toy", "toy.projection_dimm=3"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert proc.stdout.strip().splitlines()[-1] == "exit=2 torch=False"
    assert proc.stderr == "error: unknown setting toy.projection_dimm (did you mean projection_dim?)\n"


def test_no_module_branches_on_a_built_in_name():
    """A method or format name is compared nowhere: consumers ask its registration (``swav``, ``moco`` and ``spark``
    are named where they register, ``npy`` and ``png`` on their format classes)."""
    src = Path(ctreduce.__file__).parent
    branch = re.compile(r"""[=!]=\s*["'](swav|moco|spark|npy|png)["']|["'](swav|moco|spark|npy|png)["']\s*(==|!=)""")
    found = [f"{path.relative_to(src)}:{n}: {line.strip()}" for path in sorted(src.rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if branch.search(line)]
    assert found == []
