"""Threshold sweeps, target fractions and the comparison of runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

import ctreduce
from ctreduce.reduction.compare import compare_runs
from ctreduce.reduction.measures import every_n_for_target


def test_sweep_columns_equal_separate_runs(archive):
    result = ctreduce.reduce(archive, method="hash", thresholds=[2, 6, 10])
    swept = result.manifest
    for t in (2, 6, 10):
        single = ctreduce.reduce(archive, method="hash", threshold=t).manifest
        assert swept[f"kept@{t}"].tolist() == single["kept"].tolist()
    assert (swept["threshold"] == 2).all()  # the first sweep value is the primary selection
    fractions = result.summary["sweep"]
    assert fractions["2"] >= fractions["6"] >= fractions["10"]


def test_sweep_scores_each_pair_at_most_once(archive, monkeypatch):
    from ctreduce.reduction import similarity

    calls: list[int] = []
    real = similarity.MIMeasure.prepare

    def counting(self, u8):
        prepared = real(self, u8)
        inner = prepared.compare
        prepared.compare = lambda ref, others: calls.extend([ref] * len(others)) or inner(ref, others)
        return prepared

    monkeypatch.setattr(similarity.MIMeasure, "prepare", counting)
    ctreduce.reduce(archive / "nrrd", method="mi", thresholds=[0.3, 0.5, 0.7, 0.9])
    n = 16
    assert len(calls) <= n * (n - 1) / 2


@pytest.mark.parametrize("method", ["hash", "ssim", "mi"])
def test_target_fraction_picks_the_closest_threshold(archive, method):
    result = ctreduce.reduce(archive, method=method, target_fraction=0.25)
    manifest, target, sweep = result.manifest, result.summary["target"], result.summary["sweep"]
    best = min(sweep.values(), key=lambda f: abs(f - 0.25))
    assert target["kept_fraction"] == pytest.approx(best)
    assert manifest["kept"].mean() == pytest.approx(best)
    assert (manifest["threshold"] == target["threshold"]).all()
    assert not [c for c in manifest.columns if c.startswith("_")]
    chosen = manifest[f"kept@{target['threshold']:g}"]
    assert chosen.tolist() == manifest["kept"].tolist()


def test_every_n_target_fraction_chooses_n_from_slice_counts(archive):
    result = ctreduce.reduce(archive, method="every-n", target_fraction=0.2)
    manifest, n = result.manifest, result.summary["target"]["every_n"]
    assert n == every_n_for_target([30, 20, 24, 16], 0.2) == 5
    assert manifest["kept"].tolist() == (manifest["slice_index"] % n == 0).tolist()


def test_target_and_sweep_survive_resume(archive, tmp_path):
    out = tmp_path / "run"
    first = ctreduce.reduce(archive, out, method="hash", target_fraction=0.3)
    (out / "manifest.parquet").unlink()
    again = ctreduce.reduce(archive, out, method="hash", target_fraction=0.3)
    pd.testing.assert_frame_equal(first.manifest, again.manifest)


def test_bad_sweep_settings(archive):
    with pytest.raises(ValueError, match="outside the range"):
        ctreduce.reduce(archive, method="ssim", thresholds=[0.5, 1.5])
    with pytest.raises(ValidationError, match="target_fraction"):
        ctreduce.reduce(archive, method="hash", target_fraction=1.5)
    with pytest.raises(ValidationError, match="takes no threshold"):
        ctreduce.reduce(archive, method="every-n", thresholds=[2])


def test_compare_runs(archive, tmp_path):
    ctreduce.reduce(archive, tmp_path / "hash6", method="hash", threshold=6)
    ctreduce.reduce(archive, tmp_path / "every", method="every-n", every_n=3)
    ctreduce.reduce(archive, tmp_path / "all", method="all")
    ctreduce.reduce(archive, tmp_path / "every20pc", method="every-n", target_fraction=0.2)
    table, overlap = compare_runs([tmp_path / "hash6", tmp_path / "every", tmp_path / "all", tmp_path / "every20pc"])
    assert table["run"].tolist() == ["hash6", "every", "all", "every20pc"]
    assert table["every_n"].tolist()[1::2] == [3, 5] and table["every_n"].isna().tolist()[::2] == [True, True]
    assert table.loc[2, "kept_fraction"] == 1.0
    assert table.loc[1, "kept"] == sum(int(np.ceil(n / 3)) for n in (30, 20, 24, 16))
    assert overlap.loc["hash6", "all"] == pytest.approx(table.loc[0, "kept"] / table.loc[2, "kept"])
    assert (np.diag(overlap) == 1).all()
    with pytest.raises(ValueError, match="no manifest"):
        compare_runs([tmp_path])
