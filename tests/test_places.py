"""One rule for every command that writes: never into what it reads (an archive, a task, an export
used as training data), however the path is spelt; refused in one line before anything is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tree_fingerprint
from PIL import Image
from test_store import cli

import ctreduce
from ctreduce.store.places import OutputPlaceError, check_output_place

INSIDE = "is inside the input folder"


@pytest.fixture
def task(tmp_path) -> Path:
    """A small image-folder task: two classes of phantom slices."""
    from ctreduce.io.intensity import Intensity
    from ctreduce.sample_data.phantom import make_phantom

    root = tmp_path / "task"
    for label, name in enumerate(("a_without", "b_with")):
        hu, _ = make_phantom(n_slices=8, size=32, slice_thickness=3.0, seed=10 + label)
        (root / name).mkdir(parents=True)
        for k, image in enumerate(Intensity().to_uint8(hu)):
            Image.fromarray(image).save(root / name / f"{k}.png")
    return root


@pytest.fixture
def run(archive, tmp_path) -> Path:
    ctreduce.reduce(archive, tmp_path / "run")
    return tmp_path / "run"


def one_error_line(proc, *fragments: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


def test_the_rule(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    for out in (data, data / "sub" / "new", tmp_path / "link" / "new", tmp_path / "x" / ".." / "data" / "y"):
        with pytest.raises(OutputPlaceError, match="inputs are never written to|input folders are never"):
            check_output_place(out, [data])
    with pytest.raises(OutputPlaceError, match="is the input"):
        check_output_place(data / "sub" / "f.npz", [data / "sub" / "f.npz"], file=True)
    check_output_place(tmp_path / "datax", [data])  # a sibling sharing a prefix is outside
    check_output_place(tmp_path / "out" / "new", [data])
    with pytest.raises(OutputPlaceError, match="is a folder; give a file name"):
        check_output_place(data, [], file=True)


def test_reduce_export_out_inside_an_input_is_refused_before_reading(archive, tmp_path):
    before = tree_fingerprint(archive)
    proc = cli("reduce", archive, "--out", tmp_path / "run", "--export", "npy", "--export-out", archive / "exp",
               code=2)
    one_error_line(proc, f"output folder {archive / 'exp'} {INSIDE} {archive}")
    assert tree_fingerprint(archive) == before and not (tmp_path / "run").exists()


def test_export_out_inside_an_input_through_a_link_is_refused(run, archive, tmp_path):
    (tmp_path / "alias").symlink_to(archive, target_is_directory=True)
    proc = cli("export", run, "--out", tmp_path / "alias" / "png", code=2)
    one_error_line(proc, INSIDE, str(archive))


def test_duplicates_out_inside_an_input_is_refused(run, archive):
    before = tree_fingerprint(archive)
    proc = cli("duplicates", run, "--out", archive / "dups", code=2)
    one_error_line(proc, f"output folder {archive / 'dups'} {INSIDE} {archive}")
    assert tree_fingerprint(archive) == before


def test_leakage_out_inside_the_task_is_refused_and_the_task_stays_usable(run, task, tmp_path):
    before = tree_fingerprint(task)
    proc = cli("leakage", "--pretrain", run, "--task", task, "--out", task / "leak", code=2)
    one_error_line(proc, f"output folder {task / 'leak'} {INSIDE} {task}")
    assert tree_fingerprint(task) == before
    export = tmp_path / "exp"
    ctreduce.export(run, export)
    proc = cli("leakage", "--pretrain", export, "--task", task, "--out", export / "leak", code=2)
    one_error_line(proc, INSIDE, str(export))  # an export read as pre-training data is an input too
    cli("leakage", "--pretrain", run, "--task", task, "--out", tmp_path / "leak")


def test_report_inside_the_archive_is_refused(run, archive, tmp_path):
    proc = cli("report", run, "-o", archive / "report.html", code=2)
    one_error_line(proc, f"output file {archive / 'report.html'} {INSIDE} {archive}")
    cli("report", run, "-o", tmp_path)  # a folder: its report.html, as cp into a folder
    assert (tmp_path / "report.html").is_file()
    cli("report", run)  # the run folder's own report is fine
    assert (run / "report.html").is_file()


def test_pretrain_and_finetune_never_write_into_their_data(run, task, tmp_path):
    export = tmp_path / "exp"
    ctreduce.export(run, export, format="npy", size=32)
    proc = cli("pretrain", "--method", "moco", "--data", export, "--out", export / "pre", "--preset", "cpu", code=2)
    one_error_line(proc, f"output folder {export / 'pre'} {INSIDE} {export}")
    proc = cli("finetune", "--task", task, "--out", task / "ft", "--init", "random", code=2)
    one_error_line(proc, f"output folder {task / 'ft'} {INSIDE} {task}")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    proc = cli("finetune", "--task", task, "--out", weights, "--init", str(weights), code=2)
    one_error_line(proc, f"output folder {weights} is the input {weights}")
    assert not (export / "pre").exists() and not (task / "ft").exists()


def test_an_experiment_folder_inside_its_data_is_refused(archive, task, tmp_path):
    config = {"name": "x", "out": str(archive / "exp"), "datasets": [{"name": "d", "inputs": [str(archive)]}],
              "reductions": [{"name": "all", "settings": {"method": "all"}}],
              "ssl": [{"name": "moco", "settings": {"method": "moco", "preset": "cpu"}}],
              "tasks": [{"name": "t", "data": {"format": "folder", "root": str(task)}}]}
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = cli("experiment", path, code=2)
    one_error_line(proc, f"output folder {archive / 'exp'} {INSIDE} {archive}")
    path.write_text(yaml.safe_dump({**config, "out": str(task / "exp")}))
    one_error_line(cli("experiment", path, code=2), INSIDE, str(task))
    assert not (archive / "exp").exists() and not (task / "exp").exists()
    assert np.all([p.suffix == ".png" for p in task.rglob("*") if p.is_file()])
