"""Probabilities that mean what they say. A model trained with class weights learns as if half the photos were
malignant; a calibration fitted on the validation split scales the model's logits by a and adds b to the malignant
classes' ones: one calibrated distribution over the classes, softmax(a * logits + b * malignant), whose malignant
classes add up to P(malignant). For two classes this maps the log-odds z = log(P / (1 - P)) of malignant to
a * z + b. Temperature scaling (b = 0), or Platt's two-parameter form (b shifts the prior) where it predicts
held-out validation photos clearly better (5-fold cross-validated log-loss), fitted to Platt's smoothed targets;
and none at all (a = 1, b = 0) where neither lowers the held-out log-loss. a > 0: the ranking stays.
Also the measures of calibration, row-wise for the bootstrap: log-loss, Brier score, expected calibration
error (ECE, 15 equal-width bins), and the reliability diagram's bins."""

import numpy as np

BINS = 15  # equal-width bins of P for the ECE and the reliability diagram
FOLDS = 5  # cross-validation folds that choose between temperature and Platt scaling
EPS = 1e-12
APPLIES_TO = "logits"  # what a calibration {a, b} scales: the class logits (its form since issue 22)


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


def fit(y, z, mask=None):
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
