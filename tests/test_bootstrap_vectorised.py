"""The vectorised bootstrap against scikit-learn run resample by resample: each metric's value on every resample
a seed draws (ties, absent classes, any class count and positive label), the interval, ``n_valid`` and the
warning; resamples on which the AUC is undefined; chunked scoring draws the same resamples."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctreduce.downstream import metrics
from ctreduce.downstream.metrics import METRICS, MetricWarning, bootstrap_ci, bootstrap_values

sk = pytest.importorskip("sklearn.metrics")


@st.composite
def predictions(draw, max_k: int = 5, max_n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    k, n = draw(st.integers(2, max_k)), draw(st.integers(1, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    present = draw(st.integers(1, k))  # classes 0..present-1 occur, so resamples often lack one
    y = rng.integers(0, present, n)
    logits = np.round(rng.normal(0, 1, (n, k)), draw(st.sampled_from([0, 1, 3])))  # rounding makes ties
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, prob


def sklearn_metric(y: np.ndarray, prob: np.ndarray, name: str, positive: int) -> float:
    """One metric on one resample, scikit-learn's function for it (nan where the module calls it undefined)."""
    k = prob.shape[1]
    pred = prob.argmax(axis=1)
    if name == "auc":
        if k == 2:
            pos = y == positive
            return float(sk.roc_auc_score(pos, prob[:, positive])) if 0 < pos.sum() < len(y) else math.nan
        if len(np.unique(y)) < k:
            return math.nan
        return float(sk.roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=np.arange(k)))
    if name == "accuracy":
        return float(sk.accuracy_score(y, pred))
    if name == "f1_micro" or (name == "f1" and k > 2):
        return float(sk.f1_score(y, pred, labels=np.arange(k), average="micro", zero_division=0.0))
    if name == "f1":
        return float(sk.f1_score(y, pred, labels=[positive], average="macro", zero_division=0.0))
    return float(sk.f1_score(y, pred, labels=np.arange(k), average="macro", zero_division=0.0))


def sklearn_values(y: np.ndarray, prob: np.ndarray, name: str, n: int, seed: int, positive: int) -> np.ndarray:
    """The slow way: the seed's resamples one after another, each scored by scikit-learn."""
    rng = np.random.default_rng(seed)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            i = rng.integers(0, len(y), size=len(y))
            out.append(sklearn_metric(y[i], prob[i], name, positive))
    return np.array(out)


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    defined = ~np.isnan(expected)
    assert np.abs(got[defined] - expected[defined]).max(initial=0.0) <= 1e-12


@settings(max_examples=40, deadline=None)
@given(predictions(), st.sampled_from(METRICS), st.integers(0, 2**32 - 1), st.integers(1, 40),
       st.sampled_from([0.5, 0.9, 0.95]), st.data())
def test_every_resample_and_the_interval_equal_sklearns(pred, metric, seed, n, confidence, data):
    y, prob = pred
    positive = data.draw(st.integers(0, prob.shape[1] - 1))
    expected = sklearn_values(y, prob, metric, n, seed, positive)
    assert_same(bootstrap_values(y, prob, metric, n, seed, positive_label=positive), expected)

    valid = expected[~np.isnan(expected)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ci = bootstrap_ci(y, prob, metric, n=n, seed=seed, confidence=confidence, positive_label=positive)
    assert (ci["n"], ci["n_valid"], ci["confidence"]) == (n, valid.size, confidence)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(valid, [alpha, 1 - alpha]) if valid.size else (math.nan, math.nan)
    assert_same(np.array([ci["low"], ci["high"]]), np.array([low, high]))
    few = [str(w.message) for w in caught if issubclass(w.category, MetricWarning) and "bootstrap" in str(w.message)]
    assert few == ([f"bootstrap of {metric}: only {valid.size} of {n} resamples defined the metric"]
                   if valid.size < n / 2 else [])


@settings(max_examples=60, deadline=None)
@given(predictions(max_k=4), st.integers(0, 2**32 - 1), st.data())
def test_auc_with_ties_on_every_resample_equals_sklearns(pred, seed, data):
    y, prob = pred
    prob = np.round(prob, 1)  # few distinct scores: ties between positives and negatives on most resamples
    prob[:, -1] = 1 - prob[:, :-1].sum(axis=1)
    prob = np.clip(prob, 0, 1) / np.clip(prob, 0, 1).sum(axis=1, keepdims=True)
    positive = data.draw(st.integers(0, prob.shape[1] - 1))
    assert_same(bootstrap_values(y, prob, "auc", 20, seed, positive_label=positive),
                sklearn_values(y, prob, "auc", 20, seed, positive))


def test_a_thousand_samples_with_many_ties_equal_sklearns() -> None:
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 1000)
    p1 = np.round(np.clip(0.5 + 0.2 * (2 * y - 1) + rng.normal(0, 0.2, 1000), 0, 1), 2)  # 101 distinct scores
    for metric in ("auc", "f1"):
        assert_same(bootstrap_values(y, np.stack([1 - p1, p1], axis=1), metric, 100, 4),
                    sklearn_values(y, np.stack([1 - p1, p1], axis=1), metric, 100, 4, 1))
    ym = rng.integers(0, 3, 1000)
    rows = rng.dirichlet(np.ones(3), 8)  # 8 distinct probability rows: each column ties in large groups
    pm = rows[rng.integers(0, 8, 1000)]
    for metric in ("auc", "f1_macro"):
        assert_same(bootstrap_values(ym, pm, metric, 100, 4), sklearn_values(ym, pm, metric, 100, 4, 1))


def test_undefined_auc_resamples_are_those_lacking_a_class_and_are_skipped() -> None:
    y = np.array([0] * 29 + [1])  # most resamples of 30 draws miss the single positive
    prob = np.stack([np.linspace(0.9, 0.1, 30), np.linspace(0.1, 0.9, 30)], axis=1)
    rng = np.random.default_rng(5)
    lacking = np.array([not (y[rng.integers(0, 30, size=30)] == 1).any() for _ in range(200)])
    values = bootstrap_values(y, prob, "auc", 200, 5)
    assert np.array_equal(np.isnan(values), lacking) and 50 < lacking.sum() < 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # skipped silently while at least half the resamples define the AUC
        ci = bootstrap_ci(y, prob, "auc", n=200, seed=5)
    assert ci["n_valid"] == 200 - lacking.sum() and ci["low"] <= ci["high"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        none = bootstrap_ci(np.zeros(30, dtype=int), prob, "auc", n=10, seed=5)  # one class: no resample defined
    assert [str(w.message) for w in caught] == ["bootstrap of auc: only 0 of 10 resamples defined the metric",
                                                "ROC AUC undefined: y_true holds only class 0; reported as nan"]
    assert none["n_valid"] == 0 and math.isnan(none["low"]) and math.isnan(none["high"])
    ym = np.array([0, 1, 2] * 3 + [2])  # multiclass: undefined where a resample lacks any of the 3 classes
    pm = np.full((10, 3), 1 / 3)
    rng = np.random.default_rng(1)
    lacking = np.array([len(set(ym[rng.integers(0, 10, size=10)])) < 3 for _ in range(300)])
    assert np.array_equal(np.isnan(bootstrap_values(ym, pm, "auc", 300, 1)), lacking) and 0 < lacking.sum() < 300
    assert np.all(bootstrap_values(y, prob, "f1_macro", 50, 5) >= 0)  # F1 is never undefined (zero_division=0)


def test_scoring_in_chunks_draws_the_same_resamples(monkeypatch) -> None:
    y = np.random.default_rng(2).integers(0, 2, 37)
    prob = np.stack([np.linspace(0, 1, 37), np.linspace(1, 0, 37)], axis=1)
    whole = {m: bootstrap_values(y, prob, m, 25, 9) for m in METRICS}
    monkeypatch.setattr(metrics, "_CHUNK_SAMPLES", 37 * 4)  # 4 resamples at a time, the last chunk of one
    for m in METRICS:
        assert np.array_equal(bootstrap_values(y, prob, m, 25, 9), whole[m], equal_nan=True)
        assert_same(whole[m], sklearn_values(y, prob, m, 25, 9, 1))


def test_bootstrap_values_refuses_bad_arguments() -> None:
    y, prob = np.array([0, 1, 1]), np.array([[0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    with pytest.raises(ValueError, match="^metric_name must be one of"):
        bootstrap_values(y, prob, "precision")
    with pytest.raises(ValueError, match="^n must be >= 1, got 0$"):
        bootstrap_values(y, prob, "auc", n=0)
    with pytest.raises(ValueError, match="^positive_label 2 is not a class of a 2-class problem$"):
        bootstrap_values(y, prob, "f1", positive_label=2)
