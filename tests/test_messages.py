"""What the command line says to a new user: one line per settings mistake, before torch loads; quiet output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Runs the CLI in a fresh interpreter and reports whether torch was imported by the time it exited.
_PROBE = """
import sys
from ctreduce.cli import app
try:
    app(sys.argv[1:], prog_name="ctreduce")
except SystemExit as exc:
    print(f"exit={exc.code} torch={'torch' in sys.modules}")
"""


def cli_without_training(*args: str) -> tuple[str, str]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120)
    return proc.stdout.strip().splitlines()[-1], proc.stderr


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--method", "simclr"], "method 'simclr' is not one of swav, moco, spark"),
    (["pretrain", "swav.n_protoypes=10"], "unknown setting swav.n_protoypes (did you mean n_prototypes?)"),
    (["pretrain", "--backbone", "resnet5"], "backbone 'resnet5' is not one of resnet18, resnet34, resnet50, "
                                            "resnet101, resnet152 (did you mean resnet50?)"),
    (["pretrain", "--preset", "cpu", "epochs=many"], "epochs='many': input should be a valid integer, unable to "
                                                     "parse string as an integer"),
    (["pretrain", "optimizer=adam"], "optimizer 'adam' is not one of lars, sgd, lamb, adamw (did you mean adamw?)"),
    (["pretrain", "--method", "moco"], "no training data: pass --data EXPORT_DIR (written by 'ctreduce export')"),
    (["finetune", "--task", "t", "--out", "o", "--mode", "lineaer"],
     "mode 'lineaer' is not one of finetune, linear, knn (did you mean linear?)"),
    (["finetune", "--task", "t", "--out", "o", "epoch=3"], "unknown setting epoch (did you mean epochs?)"),
    (["finetune", "--task", "t", "--out", "o", "device=gpu"],
     "device 'gpu' is not one of auto, cpu, cuda, cuda:N, mps"),
    (["finetune", "--task", "t", "--out", "o", "--seeds", "0,x"], "--seeds must be comma-separated whole numbers, "
                                                                 "got '0,x'"),
    (["finetune", "--task", "missing.yaml", "--out", "o"], "missing.yaml: task spec file not found"),
])
def test_a_settings_mistake_is_one_line_before_torch_loads(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outcome, stderr = cli_without_training(*args)
    assert outcome == "exit=2 torch=False"
    assert stderr == f"error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_settings_file_and_experiment_mistakes_are_one_line_before_torch_loads(tmp_path):
    settings = tmp_path / "pretrain.yaml"
    settings.write_text("method: moco\nmoco: {temprature: 0.2}\n")
    outcome, stderr = cli_without_training("pretrain", "--config", str(settings))
    assert (outcome, stderr) == ("exit=2 torch=False",
                                 "error: unknown setting moco.temprature (did you mean temperature?)\n")

    quick = yaml.safe_load((Path(__file__).parents[1] / "configs" / "quick.yaml").read_text())
    quick["ssl"][0]["settings"]["epoch"] = quick["ssl"][0]["settings"].pop("epochs")
    quick["finetune"]["mode"] = "probe"
    experiment = tmp_path / "quick.yaml"
    experiment.write_text(yaml.safe_dump(quick))
    outcome, stderr = cli_without_training("experiment", str(experiment))
    assert outcome == "exit=2 torch=False"
    assert stderr == (f"error: {experiment}: ssl.0.settings: unknown setting epoch (did you mean epochs?); "
                      "finetune: mode 'probe' is not one of finetune, linear, knn\n")


def test_help_shows_no_value_type_beside_flags():
    from typer.testing import CliRunner

    from ctreduce.cli import app

    for args in (["--help"], ["finetune", "--help"], ["reduce", "--help"], ["pretrain", "--help"]):
        result = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
        assert result.exit_code == 0 and "--help" in result.output
        assert "<bool>" not in result.output, args
    finetune = CliRunner().invoke(app, ["finetune", "--help"], env={"COLUMNS": "160"}).output
    assert "<str>" in finetune  # options that take a value still show its type


def test_report_into_an_existing_folder_writes_report_html_there(tmp_path):
    import ctreduce
    from ctreduce.sample_data.phantom import make_phantom, write_nrrd

    hu, spacing = make_phantom(n_slices=6, size=32, slice_thickness=5.0, seed=0)
    write_nrrd(hu, spacing, tmp_path / "ct" / "p.nrrd")
    ctreduce.reduce(tmp_path / "ct", tmp_path / "run", method="all")
    folder = tmp_path / "reports"
    folder.mkdir()
    ctreduce = str(Path(sys.executable).with_name("ctreduce"))
    proc = subprocess.run([ctreduce, "report", str(tmp_path / "run"), "-o", str(folder)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"report: {folder / 'report.html'}\n" and proc.stderr == ""
    assert (folder / "report.html").read_text().startswith("<!DOCTYPE html>")
    blocked = subprocess.run([ctreduce, "report", str(tmp_path / "run"), "-o", str(folder / "report.html" / "r.html")],
                             capture_output=True, text=True, timeout=120)  # a file where the folder should be
    assert blocked.returncode == 2 and blocked.stdout == ""
    assert blocked.stderr == (f"error: cannot write to output file {folder / 'report.html' / 'r.html'}: "
                              f"{folder / 'report.html'} is not a writable folder\n")


def test_threshold_and_thresholds_combine_as_the_guide_says(tmp_path):
    """docs/reduction.md (sweeps): the primary kept is --threshold's and joins the sweep; without it, the smallest
    of the sweep."""
    import ctreduce
    from ctreduce.sample_data.phantom import make_phantom, write_nrrd

    hu, spacing = make_phantom(n_slices=16, size=48, slice_thickness=5.0, seed=1)
    write_nrrd(hu, spacing, tmp_path / "ct" / "p.nrrd")
    single = {t: ctreduce.reduce(tmp_path / "ct", method="hash", threshold=t).manifest["kept"] for t in (4, 6, 8)}
    assert single[4].sum() > single[8].sum()  # the thresholds select differently here
    swept = ctreduce.reduce(tmp_path / "ct", method="hash", thresholds=[8, 4]).manifest
    assert swept["kept"].tolist() == single[4].tolist() and {"kept@4", "kept@8"} <= set(swept.columns)
    both = ctreduce.reduce(tmp_path / "ct", method="hash", thresholds=[8, 4], threshold=6).manifest
    assert both["kept"].tolist() == single[6].tolist()
    assert [c for c in both.columns if c.startswith("kept@")] == ["kept@4", "kept@6", "kept@8"]
    guide = " ".join((Path(__file__).parents[1] / "docs" / "reduction.md").read_text().split())
    assert "is `--threshold`'s when both are given, and that threshold joins the sweep" in guide


def test_pretrain_prints_no_tips_or_deprecations_and_a_finished_rerun_trains_nothing(export_48, tmp_path):
    ctreduce = str(Path(sys.executable).with_name("ctreduce"))
    command = [ctreduce, "pretrain", "--data", str(export_48), "--out", str(tmp_path / "run"), "--preset", "cpu",
               "--backbone", "resnet18", "--epochs", "1", "--batch-size", "8", "input_size=32", "num_workers=0",
               "swav.local_crop_size=16", "swav.n_prototypes=16"]
    env = {**os.environ, "CTREDUCE_THREADS": "1", "COLUMNS": "120"}
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    output = first.stdout + first.stderr
    assert "swav resnet18: 1 epochs, 48 images in" in first.stdout
    assert "Tip" not in output and "litlogger" not in output and "LeafSpec" not in output
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.startswith(f"nothing to do: {tmp_path / 'run'} holds this run, finished (1 epochs)")
    assert "Params" not in again.stdout + again.stderr and "Epoch" not in again.stdout + again.stderr
