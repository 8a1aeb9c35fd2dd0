"""The numbers a user reads. Metrics for malignant (1) against benign (0), vectorised over rows so that one call
scores thousands of bootstrap resamples, their percentile intervals, the operating point (a threshold for a target
sensitivity that a small validation split supports, with its uncertainty), the verdict on a model that cannot be
told from chance, and the metrics of a lesion-type model.
Calibration: probabilities that mean what they say, one calibrated distribution softmax(a * logits + b * malignant)
fitted on the validation split: temperature scaling (b = 0), Platt's two-parameter form where it predicts held-out
validation photos clearly better, or none (docs/reference.md, "Calibration"); and the measures of calibration,
row-wise for the bootstrap: log-loss, Brier score, expected calibration error (ECE, 15 equal-width bins), and the
reliability diagram's bins."""

import numpy as np

CHUNK = 2**20  # bootstrap_ci draws and scores at most this many resampled photos at once
BINS = 15  # equal-width bins of P for the ECE and the reliability diagram
FOLDS = 5  # cross-validation folds that choose between temperature and Platt scaling
EPS = 1e-12
APPLIES_TO = "logits"  # what a calibration {a, b} scales: the class logits (its form since issue 22)


def binary_metrics(y, p, threshold=0.5):
    """Malignant (1) is positive, predicted when p >= threshold. Works row-wise on the last axis; the same
    numbers as scikit-learn's (tests/skinlesion/test_metrics.py)."""
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


def known_interval(ci):
    """(low, high) of a 95% interval whose two ends are numbers, else None: evaluate.py --n-bootstrap 0 computes
    none, and stores null (NaN in files of earlier versions)."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in ci):
        return None
    return float(ci[0]), float(ci[1])


def interval_text(ci, digits=3):
    """'0.812-0.901' of a known interval (known_interval), or 'not computed'."""
    known = known_interval(ci)
    return f"{known[0]:.{digits}f}-{known[1]:.{digits}f}" if known else "not computed"


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


def expected_share(value, n_stated, n_new, level=0.95):
    """(low, high): the range of a share (a sensitivity, a specificity) that n_new new photos show with chance
    level, where the share was value on n_stated photos: the central interval of the beta-binomial predictive
    (Jeffreys' prior on the stated count). Wider than the stated interval: the new photos' own noise is in it, so
    a 30-photo test figure is judged against what 30 photos can show, not against the narrower interval of the
    340 out-of-fold photos that stated it. None where either count is 0."""
    from scipy.stats import betabinom

    if not n_stated or not n_new:
        return None
    hits = value * n_stated
    predictive = betabinom(n_new, hits + 0.5, n_stated - hits + 0.5)
    low, high = predictive.ppf((1 - level) / 2), predictive.ppf((1 + level) / 2)
    return float(low / n_new), float(high / n_new)


def held_share(stated, n_stated, value, n_new):
    """(whether a share of value on n_new photos holds what stated on n_stated photos said, the range that many
    photos show 95 times in 100 as text, '77-100%'), or None without both counts: the one rule evaluate.py's
    warnings, the card and tools/measure_folds.py read a figure by. It holds within expected_share's range."""
    expected = expected_share(stated, n_stated, n_new)
    if expected is None:
        return None
    return expected[0] <= value <= expected[1], f"{100 * expected[0]:.0f}-{expected[1]:.0%}"


def calibrated_ece_limit(p, draws=2000, seed=0, level=0.95, bins=BINS):
    """The ECE that a perfectly calibrated P scores on these photos with chance level or less: labels drawn from P
    itself, draws times. On a few dozen photos ECE's own bias is large (about 0.15 on 60 photos, 15 bins); an ECE
    above this limit is miscalibration these photos can show."""
    p, rng = np.asarray(p, dtype=np.float64), np.random.default_rng(seed)
    rows = max(1, CHUNK // max(len(p), 1))  # at most CHUNK drawn labels at once
    scores = []
    for start in range(0, draws, rows):
        drawn = rng.random((min(rows, draws - start), len(p))) < p
        scores.append(ece(drawn, np.broadcast_to(p, drawn.shape), bins))
    return float(np.quantile(np.concatenate(scores), level))


def reweighted(p, prior, prevalence):
    """P(malignant) for a setting where a share prevalence of photos is malignant, from P that assumes prior:
    its odds times the ratio of the prior odds (Bayes' rule; the likelihood ratio stays)."""
    p = np.asarray(p, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):  # P = 1: infinite odds, whose P is 1 (np.where)
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
    intervals = [found["balanced_accuracy_ci95"], *(t["sensitivity_ci95"] for t in found["types"].values())]

    def bracketed(ci):  # ' [0.52-0.70]', or nothing where no interval was computed (--n-bootstrap 0)
        return f" [{interval_text(ci, 2)}]" if known_interval(ci) else ""

    per_type = ", ".join(
        f"{names.get(c, c)} {t['sensitivity']:.2f}{bracketed(t['sensitivity_ci95'])}" for c, t in found["types"].items()
    )
    said = " (95% intervals in brackets)" if any(map(known_interval, intervals)) else ""
    return (
        f"lesion types: balanced accuracy {found['balanced_accuracy']:.2f}{bracketed(found['balanced_accuracy_ci95'])} "
        f"(chance {found['chance']:.2f}); each type's sensitivity: {per_type}{said}"
    )


def expit(x):
    """scipy's logistic function, imported when first needed: scipy.special takes a quarter of a second to import,
    more than a script's --help may."""
    from scipy.special import expit as logistic

    return logistic(x)


def calibrated(z, calibration):
    """P(malignant) from the log-odds z through a calibration {a, b} (None: P itself, a = 1 and b = 0)."""
    a, b = 1.0, 0.0
    if calibration:
        a, b = calibration["a"], calibration["b"]
    return expit(a * np.asarray(z, dtype=np.float64) + b)


def as_logits(z_or_logits, mask=None):
    """(logits (n, classes), malignant mask): a 1-D z is the log-odds of a two-class model, logits [0, z]."""
    values = np.asarray(z_or_logits, dtype=np.float64)
    if values.ndim == 1:
        return np.stack([np.zeros_like(values), values], 1), np.array([False, True])
    return values, np.asarray(mask, dtype=bool)


def scaled_log_odds(logits, mask, a):
    """log(P(malignant) / P(benign)) of softmax(a * logits): the malignant classes' summed probability."""
    return np.logaddexp.reduce(a * logits[:, mask], axis=1) - np.logaddexp.reduce(a * logits[:, ~mask], axis=1)


def log_loss(y, p):
    """Mean negative log-likelihood per row (natural log)."""
    y, p = np.asarray(y) == 1, np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return -np.where(y, np.log(p), np.log1p(-p)).mean(-1)


def brier(y, p):
    return ((np.asarray(p, dtype=np.float64) - (np.asarray(y) == 1)) ** 2).mean(-1)


def bin_index(p, bins=BINS):
    return np.clip((np.asarray(p, dtype=np.float64) * bins).astype(int), 0, bins - 1)


def ece(y, p, bins=BINS):
    """Expected calibration error per row: the photo-weighted mean over bins of |mean P - share malignant|."""
    y, p = np.asarray(y) == 1, np.asarray(p, dtype=np.float64)
    rows, photos = p.shape[:-1], p.shape[-1]
    y, p = np.broadcast_to(y, p.shape).reshape(-1, photos), p.reshape(-1, photos)
    cell = bin_index(p, bins) + bins * np.arange(len(p))[:, None]  # (row, bin) of each photo, numbered
    gap = np.bincount(cell.ravel(), (p - y).ravel(), len(p) * bins)  # summed P minus malignant count per cell
    return (np.abs(gap).reshape(-1, bins).sum(1) / photos).reshape(rows)


def reliability(y, p, bins=BINS):
    """Per non-empty bin: (mean P, share malignant, photos)."""
    y, p, index = np.asarray(y) == 1, np.asarray(p, dtype=np.float64), bin_index(p, bins)
    return [
        (p[index == k].mean(), y[index == k].mean(), int((index == k).sum())) for k in range(bins) if (index == k).any()
    ]


def fit_scaling(y, logits, mask, shift):
    """(a, b) minimising the log-loss of expit(a * z + b) against Platt's smoothed targets ((n1 + 1) / (n1 + 2)
    for malignant, 1 / (n0 + 2) for benign: a split the model separates perfectly still gets a finite scale);
    b = 0 unless shift. a = exp(u) > 0."""
    from scipy.optimize import minimize  # a quarter of a second: only for fitting

    n1 = int(np.sum(y == 1))
    target = np.where(y == 1, (n1 + 1) / (n1 + 2), 1 / (len(y) - n1 + 2))

    def loss(params):
        b = params[1] if shift else 0.0
        q = np.clip(expit(scaled_log_odds(logits, mask, np.exp(params[0])) + b), EPS, 1 - EPS)
        return -np.mean(target * np.log(q) + (1 - target) * np.log1p(-q))

    start = np.zeros(2 if shift else 1)
    best = minimize(loss, start, method="L-BFGS-B", bounds=[(-10, 10)] + [(-20, 20)] * shift)
    return float(np.exp(best.x[0])), float(best.x[1]) if shift else 0.0


def held_out_losses(y, logits, mask, shift, seed=0):
    """Each photo's log-loss under the scaling fitted on the other folds (5-fold, stratified); None when a class
    has fewer than 2 photos."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(FOLDS, np.bincount(y).min())
    if folds < 2:
        return None
    held_out = np.zeros(len(y))
    for fit, score in StratifiedKFold(folds, shuffle=True, random_state=seed).split(logits, y):
        a, b = fit_scaling(y[fit], logits[fit], mask, shift)
        held_out[score] = expit(scaled_log_odds(logits[score], mask, a) + b)
    return log_loss(y[:, None], held_out[:, None])  # one row per photo


def fit_calibration(y, z, mask=None):
    """The calibration of P(malignant) on a validation split (y: 1 = malignant; z: the model's log-odds of
    malignant, or its logits (n, classes) with mask, which of them are malignant): temperature scaling, or Platt
    scaling where it predicts held-out photos better by more than one standard error of the difference (5-fold
    cross-validated log-loss; with no prior shift the extra parameter only fits noise), refitted on all of the
    split; none (a = 1, b = 0) where the chosen one does not lower the held-out log-loss below the model's own;
    with its effect there. None when the split lacks a class."""
    y = np.asarray(y).astype(int)
    logits, mask = as_logits(z, mask)
    p = expit(scaled_log_odds(logits, mask, 1.0))
    if len(np.unique(y)) < 2:
        return None
    losses = {"temperature": held_out_losses(y, logits, mask, False), "platt": held_out_losses(y, logits, mask, True)}
    method = "temperature"
    if losses["platt"] is not None:
        gain = losses["temperature"] - losses["platt"]
        if gain.mean() > gain.std(ddof=1) / np.sqrt(len(gain)):
            method = "platt"
    uncalibrated = log_loss(y[:, None], p[:, None])  # nothing fitted: every photo is held out
    a, b = 1.0, 0.0
    if losses[method] is None or losses[method].mean() < uncalibrated.mean():
        a, b = fit_scaling(y, logits, mask, method == "platt")
    else:
        method = "none"
    after = expit(scaled_log_odds(logits, mask, a) + b)
    cv = {k: None if v is None else round(float(v.mean()), 6) for k, v in losses.items()}
    return dict(
        method=method,
        a=a,
        b=b,
        applies_to=APPLIES_TO,
        cv_log_loss=dict(cv, none=round(float(uncalibrated.mean()), 6)),
        val_log_loss_before=float(log_loss(y, p)),
        val_log_loss_after=float(log_loss(y, after)),
        val_ece_before=float(ece(y, p)),
        val_ece_after=float(ece(y, after)),
    )
