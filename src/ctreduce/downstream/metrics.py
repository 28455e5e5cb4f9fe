"""Downstream classification metrics as the paper reports them, with bootstrap intervals and plots.

Inputs are integer labels ``y_true`` (N,) in 0..K-1 and class probabilities ``prob`` (N, K) whose
rows sum to 1 (apply softmax to logits first); for a binary task ``prob`` may also be the (N,)
probability of class 1. Predictions are ``argmax(prob)`` (ties go to the lower class).

Every number comes from scikit-learn (``accuracy_score``, ``roc_auc_score``, ``f1_score``,
``confusion_matrix``, ``roc_curve``); this module adds what sklearn lacks:

* ROC AUC: binary, the AUC of ``prob[:, positive_label]`` for ``y == positive_label`` (the paper:
  ``positive_label=1``; with two softmax probabilities both choices give the same number);
  multiclass, the one-vs-rest AUC per class (``auc_per_class``) and their macro average, equal to
  ``roc_auc_score(multi_class="ovr", average="macro")``;
* undefined AUC: when a class is absent from ``y_true`` (a binary test split of one class, or a
  multiclass one missing a class) the AUC is ``nan`` and a :class:`MetricWarning` names the
  class; nothing is raised, so a finished training run still reports its other metrics (sklearn
  raises for the multiclass case and only warns, without naming the class, for the binary one);
* F1: binary, of the class ``positive_label``; multiclass, micro (equal to accuracy, the paper's
  "F1" for OrganSMNIST) and macro over all K classes (a class never true and never predicted
  counts 0, ``zero_division=0``);
* the confusion matrix over all K classes (rows true, columns predicted);
* percentile bootstrap intervals that skip resamples on which a metric is undefined. Their
  resamples are scored with NumPy all at once (the same numbers as the sklearn functions above on
  each resample, within 1e-12: a loop calling sklearn took ~20 s per 1,000 resamples):
  confusion matrices by ``bincount`` and AUCs as the Mann-Whitney statistic with ties counted
  half, which is the trapezoidal ROC area ``roc_auc_score`` computes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from sklearn import metrics as sk

METRICS = ("accuracy", "auc", "f1", "f1_macro", "f1_micro")


class MetricWarning(UserWarning):
    """A metric is undefined on the given labels (e.g. AUC with a class absent) and reported as nan."""


class BootstrapCI(TypedDict):
    """Point estimate on all samples and the percentile interval over ``n_valid`` of ``n`` resamples."""

    estimate: float
    low: float
    high: float
    confidence: float
    n: int
    n_valid: int


class MeanSD(TypedDict):
    """Mean and sample standard deviation over ``n`` repeats (``sd`` None for a single value)."""

    mean: float
    sd: float | None
    n: int


def _as_inputs(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array of class indices, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.mod(y, 1) == 0):
            raise ValueError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim == 1:
        if np.any((p < 0) | (p > 1)):
            raise ValueError("a 1-D prob is the probability of class 1 and must lie in [0, 1]")
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"prob must be (N, K) class probabilities with K >= 2, got shape {p.shape}")
    if p.shape[0] != y.size:
        raise ValueError(f"y_true has {y.size} samples but prob has {p.shape[0]} rows")
    if not np.all(np.isfinite(p)):
        raise ValueError("prob contains nan or inf")
    sums = p.sum(axis=1)
    if np.any(np.abs(sums - 1.0) > 1e-4) or np.any(p < 0):
        raise ValueError("prob rows must be probabilities summing to 1 (apply softmax to logits first); "
                         f"row sums range {sums.min():.4g}..{sums.max():.4g}")
    k = p.shape[1]
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true holds labels {sorted(set(y[(y < 0) | (y >= k)].tolist()))[:5]} "
                         f"outside 0..{k - 1} (prob has {k} columns)")
    return y, p


def _check_positive(positive_label: int, k: int) -> int:
    if isinstance(positive_label, bool) or not isinstance(positive_label, int | np.integer):
        raise ValueError(f"positive_label must be an integer class index, got {positive_label!r}")
    if not 0 <= positive_label < k:
        raise ValueError(f"positive_label {positive_label} is not a class of a {k}-class problem")
    return int(positive_label)


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int | None = None) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted class (sklearn's, over 0..K-1)."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y.shape != pred.shape:
        raise ValueError(f"y_true has {y.size} samples but y_pred {pred.size}")
    k = int(max(y.max(initial=-1), pred.max(initial=-1)) + 1) if n_classes is None else int(n_classes)
    if y.size and (min(y.min(), pred.min()) < 0 or max(y.max(), pred.max()) >= k):
        raise ValueError(f"labels outside 0..{k - 1}")
    return sk.confusion_matrix(y, pred, labels=np.arange(k)).astype(np.int64)


def binary_auc(is_positive: Any, score: Any) -> float:
    """sklearn's ROC AUC of ``score`` for the boolean ``is_positive``; nan when either group is empty."""
    pos = np.asarray(is_positive, dtype=bool)
    if pos.all() or not pos.any():
        return float("nan")
    return float(sk.roc_auc_score(pos, np.asarray(score, dtype=np.float64)))


def _aucs(y: np.ndarray, p: np.ndarray, positive: int, warn: bool) -> tuple[float, list[float]]:
    k = p.shape[1]
    if k == 2:
        auc = binary_auc(y == positive, p[:, positive])
        if np.isnan(auc) and warn:
            warnings.warn(f"ROC AUC undefined: y_true holds only class {int(y[0])}; reported as nan",
                          MetricWarning, stacklevel=3)
        return auc, []
    per_class = [binary_auc(y == c, p[:, c]) for c in range(k)]
    missing = [c for c, a in enumerate(per_class) if np.isnan(a)]
    if missing:
        if warn:
            warnings.warn(f"macro ROC AUC undefined: class(es) {missing} absent from y_true or alone in it; "
                          "reported as nan",
                          MetricWarning, stacklevel=3)
        return float("nan"), per_class
    return float(np.mean(per_class)), per_class


def _f1_per_class(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return sk.f1_score(y, pred, labels=np.arange(k), average=None, zero_division=0.0)


def _metric(y: np.ndarray, p: np.ndarray, name: str, positive: int, warn: bool = True) -> float:
    k = p.shape[1]
    if name == "auc":
        return _aucs(y, p, positive, warn)[0]
    pred = p.argmax(axis=1)
    if name in ("accuracy", "f1_micro") or (name == "f1" and k > 2):
        return float(sk.accuracy_score(y, pred))
    f1 = _f1_per_class(y, pred, k)
    return float(f1[positive]) if name == "f1" else float(f1.mean())


def classification_metrics(y_true: Any, prob: Any, *, positive_label: int = 1) -> dict[str, Any]:
    """The paper's metrics on one prediction set.

    Returns ``n``, ``n_classes``, ``accuracy``, ``auc``, ``f1`` (binary: of ``positive_label``;
    multiclass: micro), ``f1_micro``, ``f1_macro``, ``confusion_matrix`` (nested lists), and for
    binary tasks ``positive_label``, for multiclass ``auc_per_class`` (one-vs-rest, nan where a
    class is absent). ``positive_label`` is ignored (beyond range checking) for multiclass tasks.
    """
    y, p = _as_inputs(y_true, prob)
    k = p.shape[1]
    positive = _check_positive(positive_label, k)
    pred = p.argmax(axis=1)
    f1 = _f1_per_class(y, pred, k)
    accuracy = float(sk.accuracy_score(y, pred))
    auc, per_class = _aucs(y, p, positive, warn=True)
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_classes": k,
        "accuracy": accuracy,
        "auc": float(auc),
        "f1": float(f1[positive]) if k == 2 else accuracy,
        "f1_micro": accuracy,
        "f1_macro": float(f1.mean()),
        "confusion_matrix": confusion_matrix(y, pred, k).tolist(),
    }
    if k == 2:
        out["positive_label"] = positive
    else:
        out["auc_per_class"] = [float(a) for a in per_class]
    return out


# Resamples scored together are at most this many samples in all (bounds the memory of the count arrays).
_CHUNK_SAMPLES = 1 << 21


def _resampled_aucs(idx: np.ndarray, is_positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Binary AUC of ``score`` for ``is_positive`` on each row of resample indices ``idx`` (R, N); nan
    where a resample lacks either group. Per resample and distinct score (ascending), the positives
    P and negatives Q drawn: AUC = sum(P * (Q below + Q/2)) / (sum P * sum Q), in exact integers."""
    distinct, group = np.unique(score, return_inverse=True)
    rows, g = idx.shape[0], distinct.size
    codes = (np.arange(rows)[:, None] * g + group[idx]) * 2 + is_positive[idx]
    counts = np.bincount(codes.ravel(), minlength=rows * g * 2).reshape(rows, g, 2)
    neg, pos = counts[..., 0], counts[..., 1]
    below = np.cumsum(neg, axis=1) - neg
    twice_u = (pos * (2 * below + neg)).sum(axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    defined = (n_pos > 0) & (n_neg > 0)
    out = np.full(rows, np.nan)
    out[defined] = twice_u[defined] / (2.0 * n_pos[defined] * n_neg[defined])
    return out


def _resampled_metric(y: np.ndarray, p: np.ndarray, idx: np.ndarray, name: str, positive: int) -> np.ndarray:
    """:func:`_metric` on each row of resample indices ``idx`` (R, N) at once."""
    k = p.shape[1]
    if name == "auc":
        if k == 2:
            return _resampled_aucs(idx, y == positive, p[:, positive])
        # nan (undefined) as soon as one class's AUC is, as in _aucs
        return np.mean([_resampled_aucs(idx, y == c, p[:, c]) for c in range(k)], axis=0)
    pred = p.argmax(axis=1)
    if name in ("accuracy", "f1_micro") or (name == "f1" and k > 2):
        return (y == pred)[idx].sum(axis=1) / idx.shape[1]
    rows = idx.shape[0]
    cm = np.bincount((np.arange(rows)[:, None] * k * k + (y * k + pred)[idx]).ravel(),
                     minlength=rows * k * k).reshape(rows, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    denom = (cm.sum(axis=2) + cm.sum(axis=1)).astype(np.float64)  # true + predicted counts, as sklearn's
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(denom.shape), where=denom > 0)  # zero_division=0
    return f1[:, positive] if name == "f1" else f1.mean(axis=1)


def _draw_and_score(y: np.ndarray, p: np.ndarray, name: str, n: int, seed: int, positive: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_SAMPLES // max(y.size, p.shape[1] ** 2))
    values = np.empty(n)
    for start in range(0, n, rows):
        # row i holds the indices that the generator's i-th call for N of them would give (tested)
        idx = rng.integers(0, y.size, size=(min(rows, n - start), y.size))
        values[start:start + idx.shape[0]] = _resampled_metric(y, p, idx, name, positive)
    return values


def _check_bootstrap(metric_name: str, n: int) -> None:
    if metric_name not in METRICS:
        raise ValueError(f"metric_name must be one of {', '.join(METRICS)}, got {metric_name!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")


def bootstrap_values(y_true: Any, prob: Any, metric_name: str, n: int = 1000, seed: int = 0, *,
                     positive_label: int = 1) -> np.ndarray:
    """The metric on each of the ``n`` resamples :func:`bootstrap_ci` draws from ``seed`` ((n,) float64,
    nan where undefined): resample i is the indices ``rng.integers(0, N, size=N)`` of the generator's
    i-th call, ``rng = np.random.default_rng(seed)``."""
    _check_bootstrap(metric_name, n)
    y, p = _as_inputs(y_true, prob)
    return _draw_and_score(y, p, metric_name, n, seed, _check_positive(positive_label, p.shape[1]))


def bootstrap_ci(y_true: Any, prob: Any, metric_name: str, n: int = 1000, seed: int = 0, *,
                 confidence: float = 0.95, positive_label: int = 1) -> BootstrapCI:
    """Percentile bootstrap interval of one metric (``accuracy``, ``auc``, ``f1``, ``f1_macro``,
    ``f1_micro``): ``n`` resamples of the test set with replacement drawn from ``seed``.

    Returns a dict (JSON-ready) ``estimate`` (on all samples), ``low``, ``high``, ``confidence``,
    ``n`` and ``n_valid``: resamples on which the metric is undefined (an AUC whose resample lacks
    a class) are skipped, ``n_valid`` says how many counted (a :class:`MetricWarning` if fewer
    than half did; low and high are nan if none did). Not ``scipy.stats.bootstrap``, whose percentile
    interval is nan as soon as one resample is (measured with scipy 1.17).
    """
    _check_bootstrap(metric_name, n)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    y, p = _as_inputs(y_true, prob)
    positive = _check_positive(positive_label, p.shape[1])
    values = _draw_and_score(y, p, metric_name, n, seed, positive)
    valid = values[~np.isnan(values)]
    if valid.size < n / 2:
        warnings.warn(f"bootstrap of {metric_name}: only {valid.size} of {n} resamples defined the metric",
                      MetricWarning, stacklevel=2)
    alpha = (1.0 - confidence) / 2.0
    low, high = (float(v) for v in np.quantile(valid, [alpha, 1.0 - alpha])) if valid.size else (np.nan, np.nan)
    return BootstrapCI(estimate=_metric(y, p, metric_name, positive), low=low, high=high,
                       confidence=float(confidence), n=int(n), n_valid=int(valid.size))


def mean_sd(values: Sequence[float] | np.ndarray) -> MeanSD:
    """``{"mean", "sd", "n"}`` over repeats (e.g. seeds): sample standard deviation (ddof=1), None
    for a single value (undefined, and JSON-safe unlike nan). nan values propagate, so a run with
    an undefined metric makes the summary visibly nan.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_sd needs at least one value")
    sd = float(np.std(x, ddof=1)) if x.size > 1 else None
    return MeanSD(mean=float(np.mean(x)), sd=sd, n=int(x.size))


def format_mean_sd(values: Sequence[float] | np.ndarray, digits: int = 3) -> str:
    """``"0.830 ± 0.012"`` (just the mean for a single value)."""
    summary = mean_sd(values)
    if summary["sd"] is None:
        return f"{summary['mean']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} ± {summary['sd']:.{digits}f}"


# --- plots -------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    # A bare Figure on the Agg canvas: no pyplot state, no backend switching for other code.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def save_confusion_matrix_png(cm: Any, classes: Sequence[str], path: str | Path, *, normalize: bool = False,
                              title: str | None = None) -> Path:
    """Write the confusion matrix (rows true, columns predicted) as a PNG with sklearn's
    ``ConfusionMatrixDisplay``; ``normalize`` shows row fractions."""
    m = np.asarray(cm, dtype=np.float64)
    k = len(classes)
    if m.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {m.shape} does not match {k} classes")
    if normalize:
        rows = m.sum(axis=1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = 2.5 + 0.45 * k
    fig = _figure(size + 1.0, size)
    display = sk.ConfusionMatrixDisplay(m if normalize else m.astype(np.int64), display_labels=list(map(str, classes)))
    display.plot(ax=fig.add_subplot(), cmap="Blues", xticks_rotation=45, values_format=".2f" if normalize else "d",
                 im_kw={"vmin": 0.0, "vmax": 1.0 if normalize else max(float(m.max()), 1.0)}, text_kw={"fontsize": 8})
    if title:
        display.ax_.set_title(title)
    return _save(fig, path)


def save_roc_png(y_true: Any, prob: Any, classes: Sequence[str], path: str | Path, *, positive_label: int = 1,
                 title: str | None = None) -> Path:
    """Write ROC curves as a PNG with sklearn's ``RocCurveDisplay``: binary, the curve of ``positive_label``;
    multiclass, one-vs-rest per class with its AUC in the legend (classes absent from ``y_true`` are left out)."""
    y, p = _as_inputs(y_true, prob)
    k = p.shape[1]
    if len(classes) != k:
        raise ValueError(f"{len(classes)} class names for {k} probability columns")
    positive = _check_positive(positive_label, k)
    fig = _figure(5.0, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for c in [positive] if k == 2 else range(k):
        if not np.isnan(binary_auc(y == c, p[:, c])):
            sk.RocCurveDisplay.from_predictions(y == c, p[:, c], name=str(classes[c]), ax=ax,
                                                curve_kwargs={"linewidth": 1.5})
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    if title:
        ax.set_title(title)
    return _save(fig, path)
