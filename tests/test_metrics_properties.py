"""Property tests: the downstream metrics equal scikit-learn's on drawn predictions (any class count, any
positive label, classes missing), and the bootstrap interval is the percentile of the metric over the
resamples its seed draws."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctreduce.downstream.metrics import (
    METRICS,
    MetricWarning,
    bootstrap_ci,
    classification_metrics,
    confusion_matrix,
    format_mean_sd,
    mean_sd,
)

sk = pytest.importorskip("sklearn.metrics")


@st.composite
def predictions(draw, max_k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    k, n = draw(st.integers(2, max_k)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    present = draw(st.integers(1, k))  # classes 0..present-1 occur: absent classes are common
    y = rng.integers(0, present, n)
    logits = np.round(rng.normal(0, 1, (n, k)), draw(st.sampled_from([0, 1, 3])))  # rounding makes ties
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, prob


def reference(y: np.ndarray, prob: np.ndarray, positive: int) -> dict:
    """The paper's metrics written with scikit-learn alone."""
    k = prob.shape[1]
    pred = prob.argmax(axis=1)
    f1 = sk.f1_score(y, pred, labels=np.arange(k), average=None, zero_division=0.0)

    def auc(c: int) -> float:
        pos = y == c
        return float(sk.roc_auc_score(pos, prob[:, c])) if 0 < pos.sum() < len(y) else math.nan

    if k == 2:
        auc_value = auc(positive)
    else:
        per_class = [auc(c) for c in range(k)]
        auc_value = math.nan if any(math.isnan(a) for a in per_class) else float(np.mean(per_class))
    accuracy = float(sk.accuracy_score(y, pred))
    return {"n": len(y), "n_classes": k, "accuracy": accuracy, "auc": auc_value,
            "f1": float(f1[positive]) if k == 2 else accuracy, "f1_micro": accuracy, "f1_macro": float(f1.mean()),
            "confusion_matrix": sk.confusion_matrix(y, pred, labels=np.arange(k)).tolist()}


def same(a, b) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


@settings(max_examples=60)
@given(predictions(), st.data())
def test_metrics_equal_sklearn(pred, data):
    y, prob = pred
    k = prob.shape[1]
    positive = data.draw(st.integers(0, k - 1))
    expected = reference(y, prob, positive)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = classification_metrics(y, prob, positive_label=positive)
    for key in ("accuracy", "auc", "f1", "f1_micro", "f1_macro"):
        assert same(got[key], expected[key]), key
    assert (got["n"], got["n_classes"], got["confusion_matrix"]) == (
        expected["n"], expected["n_classes"], expected["confusion_matrix"])
    undefined = [w for w in caught if issubclass(w.category, MetricWarning)]
    assert bool(undefined) == math.isnan(expected["auc"])  # a warning exactly when the AUC is undefined
    if k == 2:
        assert got["positive_label"] == positive and "auc_per_class" not in got
        if undefined:
            assert str(undefined[0].message) == f"ROC AUC undefined: y_true holds only class {y[0]}; reported as nan"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one_d = classification_metrics(y, prob[:, 1])  # a 1-D prob is the probability of class 1
            assert one_d == classification_metrics(y, np.stack([1 - prob[:, 1], prob[:, 1]], axis=1)) or math.isnan(
                one_d["auc"])
    else:
        assert "positive_label" not in got and len(got["auc_per_class"]) == k
        if undefined:
            missing = [c for c in range(k) if not 0 < (y == c).sum() < len(y)]
            assert re.search(rf"class\(es\) {re.escape(str(missing))} absent", str(undefined[0].message))
    assert confusion_matrix(y, prob.argmax(axis=1), k).tolist() == expected["confusion_matrix"]


@settings(max_examples=12)
@given(predictions(max_k=3), st.sampled_from(METRICS), st.integers(0, 99), st.sampled_from([0.5, 0.9, 0.95]))
def test_bootstrap_is_the_percentile_over_the_seeds_resamples(pred, metric, seed, confidence):
    y, prob = pred
    positive = 1 if prob.shape[1] == 2 else 0
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(20):
        i = rng.integers(0, len(y), size=len(y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values.append(reference(y[i], prob[i], positive)[metric])
    valid = [v for v in values if not math.isnan(v)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ci = bootstrap_ci(y, prob, metric, n=20, seed=seed, confidence=confidence, positive_label=positive)
    assert (ci["n"], ci["n_valid"], ci["confidence"]) == (20, len(valid), confidence)
    assert same(ci["estimate"], reference(y, prob, positive)[metric])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(valid, [alpha, 1 - alpha]) if valid else (math.nan, math.nan)
    assert same(ci["low"], low) and same(ci["high"], high)
    few = [w for w in caught if issubclass(w.category, MetricWarning) and "bootstrap" in str(w.message)]
    assert bool(few) == (len(valid) < 10)
    if few:
        assert str(few[0].message) == f"bootstrap of {metric}: only {len(valid)} of 20 resamples defined the metric"


def test_bootstrap_and_metrics_refuse_bad_arguments():
    y, prob = np.array([0, 1, 1]), np.array([[0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    with pytest.raises(ValueError, match=r"^metric_name must be one of accuracy, auc, f1, f1_macro, f1_micro, got 'x'"):
        bootstrap_ci(y, prob, "x")
    for n in (0, -1):
        with pytest.raises(ValueError, match=f"^n must be >= 1, got {n}$"):
            bootstrap_ci(y, prob, "auc", n=n)
    for c in (0.0, 1.0):
        with pytest.raises(ValueError, match=rf"^confidence must lie in \(0, 1\), got {c}$"):
            bootstrap_ci(y, prob, "auc", confidence=c)
    assert bootstrap_ci(y, prob, "accuracy", n=1)["n"] == 1
    for bad in (True, 1.0, "1"):
        with pytest.raises(ValueError, match=f"^positive_label must be an integer class index, got {bad!r}$"):
            classification_metrics(y, prob, positive_label=bad)
    for bad in (-1, 2):
        with pytest.raises(ValueError, match=f"^positive_label {bad} is not a class of a 2-class problem$"):
            classification_metrics(y, prob, positive_label=bad)
    assert classification_metrics(y, prob, positive_label=np.int64(0))["positive_label"] == 0
    with pytest.raises(ValueError, match=r"^a 1-D prob is the probability of class 1 and must lie in \[0, 1\]$"):
        classification_metrics(y, np.array([0.2, 1.5, 0.3]))
    with pytest.raises(ValueError, match=r"^prob must be \(N, K\) class probabilities with K >= 2, got shape \(3, 1"):
        classification_metrics(y, np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"^y_true must be a non-empty 1-D array of class indices, got shape \(3, 2"):
        classification_metrics(np.zeros((3, 2)), prob)
    with pytest.raises(ValueError, match=r"^y_true must hold integer class indices, got dtype <U1$"):
        classification_metrics(np.array(["a", "b", "b"]), prob)
    with pytest.raises(ValueError, match=r"^prob contains nan or inf$"):
        classification_metrics(y, np.array([[0.5, 0.5], [np.inf, 0.0], [0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"row sums range 0\.9..1\.2$"):
        classification_metrics(y, np.array([[0.5, 0.4], [0.6, 0.6], [0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"^prob rows must be probabilities summing to 1"):
        classification_metrics(y, np.array([[1.5, -0.5], [0.5, 0.5], [0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"^y_true holds labels \[-1, 3\] outside 0..1 \(prob has 2 columns\)$"):
        classification_metrics(np.array([-1, 3, 1]), prob)
    ok = classification_metrics(np.array([[0], [1], [1]]), prob)  # labels (N, 1) as MedMNIST ships them
    assert ok == classification_metrics(np.array([0.0, 1.0, 1.0]), prob) == classification_metrics(y, prob)
    assert classification_metrics(np.array([False, True, True]), prob)["accuracy"] == ok["accuracy"]
    with pytest.raises(ValueError, match="^y_true has 3 samples but y_pred 2$"):
        confusion_matrix([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match=r"^labels outside 0..1$"):
        confusion_matrix([0, 2], [0, 1], 2)
    assert confusion_matrix([0, 2], [1, 1]).tolist() == [[0, 1, 0], [0, 0, 0], [0, 1, 0]]  # K from the labels


@given(st.lists(st.floats(-10, 10), min_size=1, max_size=8), st.integers(0, 4))
def test_mean_sd_and_its_text(values, digits):
    summary = mean_sd(values)
    assert summary["n"] == len(values) and summary["mean"] == pytest.approx(np.mean(values))
    if len(values) == 1:
        assert summary["sd"] is None and format_mean_sd(values, digits) == f"{np.mean(values):.{digits}f}"
    else:
        assert summary["sd"] == pytest.approx(np.std(values, ddof=1))
        assert format_mean_sd(values, digits) == f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"
    assert format_mean_sd(values) == format_mean_sd(values, 3)
    with pytest.raises(ValueError, match="^mean_sd needs at least one value$"):
        mean_sd([])
