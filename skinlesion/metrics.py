"""Metrics for malignant (1) against benign (0), vectorised over rows so that one call scores thousands of
bootstrap resamples, their percentile intervals, the operating point (a threshold for a target sensitivity
that a small validation split supports, with its uncertainty), the verdict on a model that cannot be told
from chance, and the metrics of a lesion-type model."""

import numpy as np

CHUNK = 2**20  # bootstrap_ci draws and scores at most this many resampled photos at once


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


def stable_threshold(y, p, target):
    """The threshold for a target sensitivity that a small validation split supports: the raw one (the k-th
    highest P of a malignant photo, k = ceil(target * malignant photos)) sits on one photo and jumps with their
    count; this is the Harrell-Davis estimate of the same quantile (1 - target) of the malignant photos' P, a
    mean of all of them weighted by where that quantile of a resample falls, which varies less from one split to
    the next, lowered to the raw one where it lies above it: it still catches target of the malignant photos of
    the split. 0.5 for target 0. (The median over resamples of the k-th highest P is that P itself: no help.)"""
    from scipy.stats import beta

    y, p = np.asarray(y) == 1, np.asarray(p, dtype=float)
    if not target or y.all() or not y.any():
        return 0.5
    raw = threshold_for_sensitivity(y, p, target)
    positives = np.sort(p[y])
    n, q = len(positives), 1 - float(target)
    if q <= 0:
        return raw  # every malignant photo: the lowest P
    weights = np.diff(beta.cdf(np.arange(n + 1) / n, (n + 1) * q, (n + 1) * (1 - q)))
    return float(min(weights @ positives, raw))


def operating_point(y, p, target, n=2000, seed=0):
    """The stable threshold for target sensitivity on (y, p), with the sensitivity and specificity it gives
    there and their 95% bootstrap intervals."""
    threshold = stable_threshold(y, p, target)
    point, ci = binary_metrics(y, p, threshold), bootstrap_ci(y, p, n, seed, threshold=threshold)
    return dict(
        target_sensitivity=float(target),
        threshold=threshold,
        sensitivity=point["sensitivity"],
        sensitivity_ci95=list(ci["sensitivity"]),
        specificity=point["specificity"],
        specificity_ci95=list(ci["specificity"]),
        n_malignant=int(np.sum(np.asarray(y) == 1)),
        n_benign=int(np.sum(np.asarray(y) != 1)),
    )


def percent_range(value, ci):
    """'90% [81-96%]'."""
    return f"{value:.0%} [{100 * ci[0]:.0f}-{ci[1]:.0%}]"


def operating_point_text(op, photos="validation photos"):
    """What the operating point means, in plain words."""
    caught = percent_range(op["sensitivity"], op["sensitivity_ci95"])
    cleared = percent_range(op["specificity"], op["specificity_ci95"])
    return (
        f"at this threshold the model caught {caught} of the malignant {photos} and cleared {cleared} of the "
        "benign ones (brackets: 95% intervals)"
    )


def reweighted(p, prior, prevalence):
    """P(malignant) for a setting where a share prevalence of photos is malignant, from P that assumes prior:
    its odds times the ratio of the prior odds (Bayes' rule; the likelihood ratio stays)."""
    p = np.asarray(p, dtype=float)
    with np.errstate(divide="ignore"):
        odds = p / (1 - p) * (prevalence / (1 - prevalence)) / (prior / (1 - prior))
    return np.where(np.isinf(odds), 1.0, odds / (1 + odds))


def predictive_values(sensitivity, specificity, prevalence):
    """(PPV, NPV): the chance that a 'malignant' call is right, and that a 'benign' call is right, where a share
    prevalence of photos is malignant, for a test of this sensitivity and specificity."""
    caught, false_alarms = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    cleared, missed = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    ppv = caught / (caught + false_alarms) if caught + false_alarms > 0 else float("nan")
    npv = cleared / (cleared + missed) if cleared + missed > 0 else float("nan")
    return ppv, npv


def weak_model_warning(op, auc_ci):
    """A caution when the model itself is weak (validation specificity at its operating point below 0.5, or the
    lower end of its ROC-AUC interval below 0.7), else None."""
    found = []
    if op and op.get("specificity") is not None and op["specificity"] < 0.5:
        found.append(f"at its threshold it cleared only {op['specificity']:.0%} of benign validation photos")
    if auc_ci and auc_ci[0] < 0.7:
        found.append(f"its validation ROC-AUC may be as low as {auc_ci[0]:.2f} (lower end of the 95% interval)")
    return "this model is weak: " + " and ".join(found) if found else None


def operating_point_warning(op):
    """A caution when the operating point flags almost every photo or almost none, else None."""
    if op["specificity"] < 0.2:
        return f"this threshold calls almost every photo malignant (it cleared only {op['specificity']:.0%} of benign)"
    if op["sensitivity"] < 0.2:
        return f"this threshold calls almost no photo malignant (it caught only {op['sensitivity']:.0%} of malignant)"
    return None


def bootstrap_ci(y, p, n=2000, seed=0, level=0.95, threshold=0.5, metric_fn=None):
    """Percentile bootstrap over images: {metric: (low, high)} of binary_metrics (or of metric_fn(y, p), one
    number per row) over n resamples drawn with replacement; resamples with one class only are skipped. The
    resamples are drawn and scored CHUNK photos at a time (memory stays bounded for any n); the numbers are
    those of one draw of all n."""
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK // max(1, len(y)))
    parts = []
    for start in range(0, max(n, 1), rows):  # one part at least, empty for n = 0
        idx = rng.integers(0, len(y), size=(min(rows, n - start), len(y)))
        idx = idx[y[idx].min(1) != y[idx].max(1)]
        if metric_fn:
            parts.append({"value": np.asarray(metric_fn(y[idx], p[idx]), dtype=float)})
        else:
            parts.append(binary_metrics(y[idx], p[idx], threshold))
    bounds = {}
    for key in parts[0]:
        values = np.concatenate([part[key] for part in parts])
        low, high = np.nan, np.nan
        if len(values):
            low, high = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
        bounds[key] = (float(low), float(high))
    return bounds


def is_probability(p):
    """Elementwise: a finite number in [0, 1]. Anything else from a model is an error, never a label."""
    p = np.asarray(p, dtype=float)
    return np.isfinite(p) & (p >= 0) & (p <= 1)


def at_chance(auc_ci):
    """A model whose ROC-AUC 95% interval reaches down to 0.5 cannot be told from a coin."""
    return not auc_ci[0] > 0.5


# ---------------------------------------------------------------------------- lesion types
def balanced_accuracy(y, probabilities):
    """Mean over classes of the share of its photos whose most probable class is right (chance: 1 / classes)."""
    y, predicted = np.asarray(y), np.asarray(probabilities).argmax(-1)
    return float(np.mean([(predicted[y == c] == c).mean() for c in np.unique(y)]))


def one_vs_rest_auc(y, probabilities):
    """ROC-AUC of each class against all the others (NaN for a class without photos)."""
    y, probabilities = np.asarray(y), np.asarray(probabilities)
    return [float(roc_auc(y == c, probabilities[:, c])) for c in range(probabilities.shape[1])]


def confusion(y, probabilities):
    """Counts [true class, most probable class]."""
    n = np.asarray(probabilities).shape[1]
    return np.bincount(np.asarray(y) * n + np.asarray(probabilities).argmax(-1), minlength=n * n).reshape(n, n)


def type_recalls(y, predicted, n_classes):
    """Row-wise on the last axis: the share of each class's photos whose predicted class is it (its sensitivity),
    shape (..., n_classes); NaN for a class without photos in the row."""
    y, predicted = np.asarray(y), np.asarray(predicted)
    found = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for c in range(n_classes):
            found.append(((predicted == c) & (y == c)).sum(-1) / (y == c).sum(-1))
    return np.stack(found, -1)


def types_with_intervals(y, probabilities, classes, n=2000, seed=0):
    """The lesion types' balanced accuracy and each type's sensitivity (most probable type right), each with its
    95% bootstrap interval over photos (the resamples of bootstrap_ci); chance is 1 / types."""
    y, predicted = np.asarray(y), np.asarray(probabilities).argmax(-1)
    k = len(classes)
    recalls = type_recalls(y, predicted, k)

    def mean_recall(y, q):
        return np.nanmean(type_recalls(y, q, k), -1)

    ci = bootstrap_ci(y, predicted, n, seed, metric_fn=mean_recall)["value"]
    per_type = {}
    for c, name in enumerate(classes):

        def recall(y, q, c=c):
            return type_recalls(y, q, k)[..., c]

        low, high = bootstrap_ci(y, predicted, n, seed, metric_fn=recall)["value"]
        per_type[name] = dict(sensitivity=float(recalls[c]), sensitivity_ci95=[low, high], photos=int((y == c).sum()))
    return dict(balanced_accuracy=float(np.nanmean(recalls)), balanced_accuracy_ci95=list(ci), chance=1 / k,
                types=per_type)  # fmt: skip


def types_text(found, names=None):
    """'balanced accuracy 0.61 [0.52-0.70] (chance 0.33); sensitivity: Nevus 0.80 [0.70-0.88], ...'."""
    names = names or {}
    low, high = found["balanced_accuracy_ci95"]
    per_type = ", ".join(
        f"{names.get(c, c)} {t['sensitivity']:.2f} [{t['sensitivity_ci95'][0]:.2f}-{t['sensitivity_ci95'][1]:.2f}]"
        for c, t in found["types"].items()
    )
    return (
        f"lesion types: balanced accuracy {found['balanced_accuracy']:.2f} [{low:.2f}-{high:.2f}] (chance "
        f"{found['chance']:.2f}); each type's sensitivity: {per_type} (95% intervals in brackets)"
    )
