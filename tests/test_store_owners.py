"""Fine-tune and experiment folders go through their store owners: strict JSON, atomic files, markers last."""

from __future__ import annotations

import ast
import errno
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ctreduce.config import FinetuneConfig
from ctreduce.downstream.evaluate import evaluate_run, save_predictions
from ctreduce.store.files import DiskFull
from ctreduce.store.finetune import FinetuneRun

SRC = Path(__file__).resolve().parents[1] / "src" / "ctreduce"


def strict(path: Path):
    """The file parsed as strict JSON: NaN or Infinity in it fail the test."""
    def refuse(constant: str):
        raise AssertionError(f"{path} holds {constant}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def finetune_run(tmp_path) -> Path:
    """A fine-tune folder with one seed's saved predictions whose test split lacks class 1: its AUC is undefined."""
    out = tmp_path / "ft"
    config = FinetuneConfig(task={"format": "folder", "root": "-"}, out=str(out))
    FinetuneRun(out).prepare(config.model_dump(mode="json"), resume=True)
    (out / "seed0").mkdir()
    labels = np.zeros(6, dtype=np.int64)
    prob = np.tile([0.7, 0.3], (6, 1))
    save_predictions(out / "seed0", [f"i{k}" for k in range(6)], labels, prob, ["a", "b"])
    return out


def test_an_undefined_metric_is_written_as_null(finetune_run):
    with pytest.warns(UserWarning, match="undefined"):
        evaluate_run(finetune_run, bootstrap=5)
    metrics = strict(finetune_run / "seed0" / "metrics.json")
    assert metrics["auc"] is None and metrics["accuracy"] == 1.0
    assert metrics["confusion_matrix"] == [[6, 0], [0, 0]]
    results = strict(finetune_run / "results.json")
    assert results["per_seed"][0]["auc"] is None and "auc" not in results and results["accuracy"]["mean"] == 1.0
    assert FinetuneRun(finetune_run).results() == results


def _full_disk_for(name: str, monkeypatch) -> None:
    """Writing a file called ``name`` (or its temporary sibling) writes half of it, then meets a full disk."""
    write_text, to_csv = Path.write_text, pd.DataFrame.to_csv

    def half_text(self, text, *args, **kwargs):
        if name in self.name:
            write_text(self, text[: len(text) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_text(self, text, *args, **kwargs)

    def failing_csv(self, path=None, *args, **kwargs):
        if path is not None and name in Path(path).name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", half_text)
    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_csv)


def test_a_full_disk_keeps_the_previous_metrics_whole(finetune_run, monkeypatch):
    with pytest.warns(UserWarning):
        evaluate_run(finetune_run, bootstrap=5)
    before = (finetune_run / "seed0" / "metrics.json").read_text()
    _full_disk_for("metrics.json", monkeypatch)
    with pytest.raises(DiskFull, match="metrics.json"), pytest.warns(UserWarning):
        evaluate_run(finetune_run, bootstrap=7)
    assert (finetune_run / "seed0" / "metrics.json").read_text() == before
    assert sorted(p.name for p in (finetune_run / "seed0").iterdir() if p.name.startswith(".")) == []


def test_a_run_is_marked_finished_only_after_its_results_csv(finetune_run, monkeypatch):
    _full_disk_for("results.csv", monkeypatch)
    with pytest.raises(DiskFull, match="results.csv"), pytest.warns(UserWarning):
        evaluate_run(finetune_run, bootstrap=5)
    assert not (finetune_run / "results.json").exists() and FinetuneRun(finetune_run).results() == {}


def test_config_files_are_replaced_atomically(tmp_path, monkeypatch):
    out = tmp_path / "ft"
    config = FinetuneConfig(task={"format": "folder", "root": "-"}, out=str(out)).model_dump(mode="json")
    FinetuneRun(out).prepare(config, resume=True)
    _full_disk_for("config.yaml", monkeypatch)
    with pytest.raises(DiskFull, match="config.yaml"):
        FinetuneRun(out).prepare({**config, "epochs": 3}, resume=False)
    assert yaml.safe_load((out / "config.yaml").read_text()) == config


def test_an_experiment_stage_is_marked_done_last_in_strict_json(tmp_path):
    from test_experiment import TINY, write

    from ctreduce.experiment.runner import ExperimentError, Runner, load_experiment

    runner = Runner(load_experiment(write(tmp_path, TINY)), log=lambda line: None)
    calls = []

    def failing(folder: Path) -> dict:
        calls.append(folder)
        (folder / "partial").write_text("half a stage")
        raise ValueError("batch larger than the data")

    with pytest.raises(ExperimentError, match="batch larger"):
        runner._stage("pretrain", "k1", failing, "a stage that fails")
    assert not (calls[0] / "done.json").exists()

    def reporting(folder: Path) -> dict:
        calls.append(folder)
        return {"auc": float("nan"), "kept": np.int64(3), "folder": folder / "run"}

    folder = runner._stage("pretrain", "k1", reporting, "the stage again")
    done = strict(folder / "done.json")
    assert len(calls) == 2 and done["auc"] is None and done["kept"] == 3 and done["folder"] == str(folder / "run")
    assert runner._stage("pretrain", "k1", reporting, "cached") == folder and len(calls) == 2


def test_one_library_versions():
    """One function looks library versions up; each command passes the libraries its output depends on."""
    found = [f"{path.relative_to(SRC)}:{node.name}" for path in SRC.rglob("*.py")
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.FunctionDef) and node.name.endswith("_versions")]
    assert found == ["core/versions.py:library_versions"]


def test_a_runs_versions_are_the_libraries_it_names(tmp_path, archive):
    import ctreduce
    from ctreduce.core.versions import library_versions
    from ctreduce.reduction.run import LIBRARIES

    ctreduce.reduce(archive, tmp_path / "run", method="all")
    recorded = json.loads((tmp_path / "run" / "summary.json").read_text())["versions"]
    assert recorded == library_versions(LIBRARIES) and list(recorded) == ["python", *LIBRARIES]
