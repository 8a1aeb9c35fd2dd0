"""Probabilities that mean what they say. A model trained with class weights learns as if half the photos were
malignant; a calibration fitted on the validation split maps its log-odds z = log(P / (1 - P)) of malignant to
a * z + b: temperature scaling (b = 0) or Platt's two-parameter form (b shifts the prior), whichever predicts
held-out validation photos better (5-fold cross-validated log-loss), fitted to Platt's smoothed targets. a > 0:
the ranking, so the ROC-AUC, stays.
Also the measures of calibration, row-wise for the bootstrap: log-loss, Brier score, expected calibration
error (ECE, 15 equal-width bins), and the reliability diagram's bins."""

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

BINS = 15  # equal-width bins of P for the ECE and the reliability diagram
FOLDS = 5  # cross-validation folds that choose between temperature and Platt scaling
EPS = 1e-12


def log_odds(p):
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def calibrated(z, calibration):
    """P(malignant) from the log-odds z through a calibration {a, b} (None: P itself, a = 1 and b = 0)."""
    a, b = 1.0, 0.0
    if calibration:
        a, b = calibration["a"], calibration["b"]
    return expit(a * np.asarray(z, dtype=np.float64) + b)


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
    one_hot = bin_index(p, bins)[..., None] == np.arange(bins)  # (..., n, bins)
    gap = ((p[..., None] - y[..., None]) * one_hot).sum(-2)  # summed P minus malignant count, per bin
    return np.abs(gap).sum(-1) / p.shape[-1]


def reliability(y, p, bins=BINS):
    """Per non-empty bin: (mean P, share malignant, photos)."""
    y, p, index = np.asarray(y) == 1, np.asarray(p, dtype=np.float64), bin_index(p, bins)
    return [
        (p[index == k].mean(), y[index == k].mean(), int((index == k).sum())) for k in range(bins) if (index == k).any()
    ]


def fit_scaling(y, z, shift):
    """(a, b) minimising the log-loss of expit(a * z + b) against Platt's smoothed targets ((n1 + 1) / (n1 + 2)
    for malignant, 1 / (n0 + 2) for benign: a split the model separates perfectly still gets a finite scale);
    b = 0 unless shift. a = exp(u) > 0."""
    n1 = int(np.sum(y == 1))
    target = np.where(y == 1, (n1 + 1) / (n1 + 2), 1 / (len(y) - n1 + 2))

    def loss(params):
        b = params[1] if shift else 0.0
        q = np.clip(expit(np.exp(params[0]) * z + b), EPS, 1 - EPS)
        return -np.mean(target * np.log(q) + (1 - target) * np.log1p(-q))

    start = np.zeros(2 if shift else 1)
    best = minimize(loss, start, method="L-BFGS-B", bounds=[(-10, 10)] + [(-20, 20)] * shift)
    return float(np.exp(best.x[0])), float(best.x[1]) if shift else 0.0


def cross_validated_loss(y, z, shift, seed=0):
    """Log-loss of the scaling fitted on 4 folds and scored on the fifth, over the 5 folds."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(FOLDS, np.bincount(y).min())
    if folds < 2:
        return np.inf
    held_out = np.zeros(len(y))
    for fit, score in StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, y):
        a, b = fit_scaling(y[fit], z[fit], shift)
        held_out[score] = expit(a * z[score] + b)
    return float(log_loss(y, held_out))


def fit(y, z):
    """The calibration of P(malignant) = expit(z) on a validation split (y: 1 = malignant, z: the model's
    log-odds): temperature or Platt scaling, the one with the lower cross-validated log-loss, refitted on all of
    the split, with its effect there; None when the split lacks a class."""
    y, z = np.asarray(y).astype(int), np.asarray(z, dtype=np.float64)
    p = expit(z)
    if len(np.unique(y)) < 2:
        return None
    cv = {"temperature": cross_validated_loss(y, z, False), "platt": cross_validated_loss(y, z, True)}
    method = min(cv, key=cv.get)
    a, b = fit_scaling(y, z, method == "platt")
    after = expit(a * z + b)
    return dict(
        method=method,
        a=a,
        b=b,
        cv_log_loss={k: round(v, 6) for k, v in cv.items()},
        val_log_loss_before=float(log_loss(y, p)),
        val_log_loss_after=float(log_loss(y, after)),
        val_ece_before=float(ece(y, p)),
        val_ece_after=float(ece(y, after)),
    )
