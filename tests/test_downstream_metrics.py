"""Downstream metrics against scikit-learn on fixed predictions, bootstrap intervals and plots."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from ctreduce.downstream.metrics import (
    MetricWarning,
    binary_auc,
    bootstrap_ci,
    classification_metrics,
    confusion_matrix,
    format_mean_sd,
    mean_sd,
    save_confusion_matrix_png,
    save_roc_png,
)

sk = pytest.importorskip("sklearn.metrics")


def _binary(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    # Informative but imperfect scores, rounded so that ties occur.
    p1 = np.clip(np.round(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.25, n), 1), 0.0, 1.0)
    return y, np.stack([1 - p1, p1], axis=1)


def _multiclass(n: int = 150, k: int = 4, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.0
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, prob


@pytest.mark.parametrize("positive", [0, 1])
def test_binary_metrics_match_sklearn(positive: int) -> None:
    y, prob = _binary()
    m = classification_metrics(y, prob, positive_label=positive)
    pred = prob.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["auc"] == pytest.approx(sk.roc_auc_score(y == positive, prob[:, positive]))
    assert m["auc"] == pytest.approx(sk.roc_auc_score(y, prob[:, 1]))  # softmax pair: same either way
    assert m["f1"] == pytest.approx(sk.f1_score(y, pred, pos_label=positive))
    assert m["f1_macro"] == pytest.approx(sk.f1_score(y, pred, average="macro"))
    assert m["f1_micro"] == pytest.approx(sk.f1_score(y, pred, average="micro"))
    assert m["confusion_matrix"] == sk.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert m["positive_label"] == positive and m["n"] == len(y) and m["n_classes"] == 2


def test_binary_one_dimensional_prob_is_probability_of_class_1() -> None:
    y, prob = _binary()
    assert classification_metrics(y, prob[:, 1]) == classification_metrics(y, prob)


def test_multiclass_metrics_match_sklearn() -> None:
    y, prob = _multiclass()
    m = classification_metrics(y, prob)
    pred = prob.argmax(axis=1)
    labels = list(range(prob.shape[1]))
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["auc"] == pytest.approx(sk.roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    assert m["f1"] == m["f1_micro"] == pytest.approx(sk.f1_score(y, pred, average="micro"))
    assert m["f1_micro"] == pytest.approx(m["accuracy"])
    assert m["f1_macro"] == pytest.approx(sk.f1_score(y, pred, average="macro", labels=labels))
    assert m["confusion_matrix"] == sk.confusion_matrix(y, pred, labels=labels).tolist()
    for c, auc in enumerate(m["auc_per_class"]):
        assert auc == pytest.approx(sk.roc_auc_score(y == c, prob[:, c]))


def test_multiclass_class_never_predicted_counts_zero_in_macro_f1() -> None:
    y, prob = _multiclass(k=3)
    prob = np.concatenate([prob * 0.9, np.full((len(y), 1), 0.1)], axis=1)  # class 3: never true, never argmax
    pred = prob.argmax(axis=1)
    with pytest.warns(MetricWarning, match=r"class\(es\) \[3\] absent"):
        m = classification_metrics(y, prob)
    assert np.isnan(m["auc"])
    assert m["f1_macro"] == pytest.approx(sk.f1_score(y, pred, average="macro", labels=[0, 1, 2, 3],
                                                      zero_division=0))


def test_binary_auc_with_one_class_is_nan_with_warning() -> None:
    y = np.ones(5, dtype=int)
    prob = np.full((5, 2), 0.5)
    with pytest.warns(MetricWarning, match="only class 1"):
        m = classification_metrics(y, prob)
    assert np.isnan(m["auc"]) and m["accuracy"] == 0.0  # ties go to class 0


def test_auc_ties_equal_sklearn() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    score = np.array([0.2, 0.5, 0.5, 0.9, 0.5, 0.2, 0.7, 0.1])
    assert binary_auc(y == 1, score) == pytest.approx(sk.roc_auc_score(y, score))


@pytest.mark.parametrize(
    ("y", "prob", "message"),
    [
        ([0, 1, 2], [[0.5, 0.5]] * 3, "outside 0..1"),
        ([0, 1], [[2.0, -1.0], [0.0, 3.0]], "softmax"),
        ([0, 1, 1], [[0.5, 0.5]] * 2, "3 samples but prob has 2 rows"),
        ([0, 1], [[np.nan, 0.5], [0.5, 0.5]], "nan"),
        ([], np.zeros((0, 2)), "non-empty"),
        ([0.5, 1], [[0.5, 0.5]] * 2, "integer"),
    ],
)
def test_bad_inputs_raise(y, prob, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(y, prob)


def test_positive_label_must_be_a_class() -> None:
    y, prob = _binary()
    with pytest.raises(ValueError, match="positive_label 2"):
        classification_metrics(y, prob, positive_label=2)


def test_confusion_matrix_rows_true_columns_predicted() -> None:
    cm = confusion_matrix([0, 0, 1, 2], [0, 1, 1, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize("metric", ["accuracy", "auc", "f1", "f1_macro", "f1_micro"])
def test_bootstrap_ci_contains_estimate_and_is_reproducible(metric: str) -> None:
    y, prob = _binary(n=200)
    ci = bootstrap_ci(y, prob, metric, n=300, seed=3)
    assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert ci["high"] > ci["low"]
    assert ci["estimate"] == pytest.approx(classification_metrics(y, prob)[metric])
    assert ci == bootstrap_ci(y, prob, metric, n=300, seed=3)
    assert ci != bootstrap_ci(y, prob, metric, n=300, seed=4)
    assert ci["n_valid"] == ci["n"] == 300 and ci["confidence"] == 0.95


def test_bootstrap_multiclass_auc_and_positive_label() -> None:
    y, prob = _multiclass()
    ci = bootstrap_ci(y, prob, "auc", n=200, seed=0)
    assert ci["low"] <= ci["estimate"] <= ci["high"]
    yb, pb = _binary()
    f1_0 = bootstrap_ci(yb, pb, "f1", n=50, seed=0, positive_label=0)
    assert f1_0["estimate"] == pytest.approx(sk.f1_score(yb, pb.argmax(1), pos_label=0))


def test_bootstrap_skips_undefined_resamples() -> None:
    y = np.array([0] * 19 + [1])
    prob = np.stack([np.linspace(0.9, 0.1, 20), np.linspace(0.1, 0.9, 20)], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # undefined resamples are skipped silently while most are defined
        ci = bootstrap_ci(y, prob, "auc", n=200, seed=0)
    assert 0 < ci["n_valid"] < 200


def test_bootstrap_rejects_unknown_metric() -> None:
    y, prob = _binary()
    with pytest.raises(ValueError, match="metric_name must be one of"):
        bootstrap_ci(y, prob, "precision")


def test_mean_sd() -> None:
    summary = mean_sd([0.8, 0.85, 0.9])
    assert summary["mean"] == pytest.approx(0.85)
    assert summary["sd"] == pytest.approx(np.std([0.8, 0.85, 0.9], ddof=1))
    assert summary["n"] == 3
    assert mean_sd([0.7]) == {"mean": 0.7, "sd": None, "n": 1}
    assert format_mean_sd([0.8, 0.9]) == "0.850 ± 0.071"
    assert format_mean_sd([0.8]) == "0.800"
    with pytest.raises(ValueError):
        mean_sd([])


def _decode(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_plots_are_written_and_decode(tmp_path) -> None:
    y, prob = _binary()
    m = classification_metrics(y, prob)
    cm_path = save_confusion_matrix_png(np.asarray(m["confusion_matrix"]), ["a_without", "b_with"],
                                        tmp_path / "plots" / "cm.png")
    roc_path = save_roc_png(y, prob, ["a_without", "b_with"], tmp_path / "roc.png")
    ym, pm = _multiclass()
    roc_multi = save_roc_png(ym, pm, ["w", "x", "y", "z"], tmp_path / "roc4.png", title="one-vs-rest")
    cm_norm = save_confusion_matrix_png(confusion_matrix(ym, pm.argmax(1), 4), list("wxyz"), tmp_path / "cm4.png",
                                        normalize=True)
    for path in (cm_path, roc_path, roc_multi, cm_norm):
        pixels = _decode(path)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 0  # not a blank canvas


def test_plot_argument_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not match 3 classes"):
        save_confusion_matrix_png(np.eye(2), ["a", "b", "c"], tmp_path / "x.png")
    y, prob = _binary()
    with pytest.raises(ValueError, match="3 class names for 2"):
        save_roc_png(y, prob, ["a", "b", "c"], tmp_path / "y.png")


def test_bootstrap_interval_is_the_percentile_of_sklearn_metrics_on_the_same_resamples() -> None:
    y, prob = _binary(n=60)
    rng = np.random.default_rng(7)  # the draws bootstrap_ci makes from seed 7, one resample after another
    resamples = [rng.integers(0, len(y), size=len(y)) for _ in range(50)]
    aucs = [sk.roc_auc_score(y[i] == 1, prob[i, 1]) for i in resamples]
    f1s = [sk.f1_score(y[i], prob[i].argmax(1), pos_label=1) for i in resamples]
    for name, values in (("auc", aucs), ("f1", f1s)):
        ci = bootstrap_ci(y, prob, name, n=50, seed=7)
        assert (ci["low"], ci["high"]) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))


def test_multiclass_test_split_of_one_class_reports_undefined_auc_not_an_error() -> None:
    y, prob = _multiclass(k=3)
    y = np.zeros_like(y)
    with pytest.raises(ValueError):  # what sklearn alone does with such a split
        sk.roc_auc_score(y, prob, multi_class="ovr")
    with pytest.warns(MetricWarning, match=r"class\(es\) \[0, 1, 2\] absent"):  # class 0 lacks negatives
        m = classification_metrics(y, prob)
    assert np.isnan(m["auc"]) and all(np.isnan(a) for a in m["auc_per_class"])
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, prob.argmax(1)))


def test_labels_outside_the_probability_columns_are_named():
    """A label equal to the number of columns, or negative, is refused, and the message lists exactly those."""
    from ctreduce.downstream.metrics import classification_metrics

    prob = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    with pytest.raises(ValueError, match=r"holds labels \[2\] outside 0\.\.1 \(prob has 2 columns\)"):
        classification_metrics([0, 1, 2], prob)
    with pytest.raises(ValueError, match=r"holds labels \[-1\] outside 0\.\.1"):
        classification_metrics([0, -1, 1], prob)
    many = np.tile([[0.5, 0.5]], (8, 1))
    with pytest.raises(ValueError, match=r"holds labels \[2, 3, 4, 5, 6\] outside"):  # the first five
        classification_metrics([0, 1, 2, 3, 4, 5, 6, 7], many)
    with pytest.raises(ValueError, match="y_true has 2 samples but prob has 3 rows"):
        classification_metrics([0, 1], np.array([[0.2, 0.3, 0.5]] * 3))


def test_the_confusion_matrix_of_one_class_and_its_types():
    from ctreduce.downstream.metrics import confusion_matrix, mean_sd

    assert confusion_matrix([0, 0], [0, 0]).tolist() == [[2]]  # one class seen: 1 x 1
    counts = confusion_matrix(np.array([0.0, 1.0, 1.0]), [1, 1, 0])
    assert counts.dtype == np.int64 and counts.tolist() == [[0, 1], [1, 1]]
    assert confusion_matrix([2], [2]).shape == (3, 3)
    summary = mean_sd(np.array([1, 2], dtype=np.int8))
    assert isinstance(summary["mean"], float) and summary["sd"] == pytest.approx(0.7071067811865476)
