"""Metrics for malignant (1) against benign (0), vectorised over rows so that one call scores thousands of
bootstrap resamples, their percentile intervals, the threshold for a target sensitivity, and the verdict on a
model that cannot be told from chance."""

import numpy as np


def binary_metrics(y, p, threshold=0.5):
    """Malignant (1) is positive, predicted when p >= threshold. Works row-wise on the last axis; the same
    numbers as scikit-learn's (tests/test_metrics.py)."""
    y, p = np.asarray(y) == 1, np.asarray(p, dtype=float)
    pred = p >= threshold
    tp, fp = (pred & y).sum(-1), (pred & ~y).sum(-1)
    fn, tn = (~pred & y).sum(-1), (~pred & ~y).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, spec = tp / (tp + fn), tn / (tn + fp)
        m = dict(
            accuracy=(tp + tn) / y.shape[-1],
            balanced_accuracy=(sens + spec) / 2,
            precision=np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            sensitivity=np.nan_to_num(sens),
            specificity=spec,
            f1=np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
            roc_auc=roc_auc(y, p),
        )
    if y.ndim > 1:
        return m
    counts = dict(tn=int(tn), fp=int(fp), fn=int(fn), tp=int(tp), threshold=float(threshold))
    return dict({k: float(v) for k, v in m.items()}, **counts)


def roc_auc(y, p):
    """ROC-AUC per row (Mann-Whitney U, tied scores share ranks); NaN where a row has one class only."""
    from scipy.stats import rankdata

    pos = np.asarray(y) == 1
    n1, n0 = pos.sum(-1), (~pos).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((rankdata(p, axis=-1) * pos).sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def threshold_for_sensitivity(y_true, p_malignant, target):
    """The highest threshold whose sensitivity on (y_true, p) is at least target (0 = plain 0.5)."""
    from sklearn.metrics import roc_curve

    if not target or len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y_true, p_malignant, drop_intermediate=False)
    return float(min(1.0, np.max(thresholds[tpr >= target])))


def bootstrap_ci(y, p, n=2000, seed=0, level=0.95, threshold=0.5, metric_fn=None):
    """Percentile bootstrap over images: {metric: (low, high)} of binary_metrics (or of metric_fn(y, p), one
    number per row) over n resamples drawn with replacement; resamples with one class only are skipped."""
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n, len(y)))
    idx = idx[y[idx].min(1) != y[idx].max(1)]
    if metric_fn:
        values = {"value": metric_fn(y[idx], p[idx])}
    else:
        values = binary_metrics(y[idx], p[idx], threshold)
    bounds = {}
    for key, v in values.items():
        if len(idx):
            low, high = np.nanpercentile(v, [50 * (1 - level), 50 * (1 + level)])
        else:
            low, high = np.nan, np.nan
        bounds[key] = (float(low), float(high))
    return bounds


def at_chance(auc_ci):
    """A model whose ROC-AUC 95% interval reaches down to 0.5 cannot be told from a coin."""
    return not auc_ci[0] > 0.5
