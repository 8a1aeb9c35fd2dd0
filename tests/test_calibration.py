"""skinlesion/calibration.py: calibrating a class-weighted model lowers its log-loss, keeps its ranking and brings
its ECE on new photos of the same prevalence to at most 0.05; temperature or Platt scaling as the cross-validated
log-loss says; a split the model separates perfectly keeps a finite scale; the measures of calibration row by row
as one by one, equal to scikit-learn's, and the reliability diagram's bins."""

import tracemalloc

import numpy as np
import pytest
from scipy.special import expit
from sklearn import metrics as skm

from skinlesion import calibration, metrics


def logits(n, prevalence, seed, scale=1.0, separation=2.0, weighted=True):
    """(y, z): n photos, a share prevalence of them malignant, and the log-odds of malignant a model gives them.
    Its score s is N(+-separation / 2, 1) for malignant and benign, so the true log-odds are separation * s +
    log(prevalence / (1 - prevalence)); a model trained with class weights learns them as if half the photos
    were malignant (no prior term: weighted), and an overconfident one has them times scale."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    s = rng.normal(np.where(y == 1, separation / 2, -separation / 2), 1)
    prior = 0.0 if weighted else np.log(prevalence / (1 - prevalence))
    return y, scale * (separation * s + prior)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_lowers_the_validation_log_loss_of_a_class_weighted_model_and_keeps_its_roc_auc(seed):
    y, z = logits(800, 0.2, seed)  # validation: ~20% malignant, the model thinks half are
    fitted = calibration.fit(y, z)
    p = calibration.calibrated(z, fitted)
    assert fitted["val_log_loss_after"] < fitted["val_log_loss_before"] - 0.05
    assert fitted["val_log_loss_after"] == pytest.approx(calibration.log_loss(y, p))
    assert fitted["val_ece_after"] < fitted["val_ece_before"]
    assert fitted["a"] > 0 and metrics.roc_auc(y, p) == metrics.roc_auc(y, z)  # the same ranking
    y_test, z_test = logits(3000, 0.2, 100 + seed)  # new photos, the validation's prevalence
    assert calibration.ece(y_test, calibration.calibrated(z_test, None)) > 0.1
    assert calibration.ece(y_test, calibration.calibrated(z_test, fitted)) <= 0.05
    assert metrics.roc_auc(y_test, calibration.calibrated(z_test, fitted)) == metrics.roc_auc(y_test, z_test)


@pytest.mark.parametrize("seed", range(4))
def test_platt_scaling_where_the_prior_is_shifted(seed):
    """Class weights shift the log-odds by log(1/4) for 20% malignant: only Platt's b can take that back."""
    y, z = logits(400, 0.2, seed, scale=1.5)
    fitted = calibration.fit(y, z)
    assert fitted["method"] == "platt"
    assert fitted["cv_log_loss"]["platt"] < fitted["cv_log_loss"]["temperature"]
    assert fitted["a"] == pytest.approx(1 / 1.5, rel=0.25) and fitted["b"] == pytest.approx(np.log(0.25), abs=0.4)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prevalence", [0.5, 0.2])
def test_temperature_scaling_where_only_the_temperature_is_wrong(seed, prevalence):
    """An overconfident model (log-odds three times too large) whose prior is right: the extra parameter of
    Platt scaling would only fit noise, and temperature scaling is kept."""
    y, z = logits(300, prevalence, seed, scale=3.0, weighted=False)
    fitted = calibration.fit(y, z)
    assert fitted["method"] == "temperature" and fitted["b"] == 0.0
    assert fitted["a"] == pytest.approx(1 / 3, rel=0.4)  # shrinks the log-odds about threefold
    assert fitted["val_log_loss_after"] < fitted["val_log_loss_before"]


def test_a_perfectly_separated_split_keeps_a_finite_scale():
    y = np.repeat([0, 1], 20)
    z = np.r_[np.linspace(-3, -0.5, 20), np.linspace(0.5, 3, 20)]  # separated, and underconfident: scaled up
    fitted = calibration.fit(y, z)
    assert fitted["method"] == "temperature" and fitted["a"] > 1
    assert 0 < fitted["a"] < 5 and abs(fitted["b"]) < 5  # Platt's smoothed targets: no infinite slope
    p = calibration.calibrated(z, fitted)
    assert p.min() > 0 and p.max() < 1 - 1e-3 and metrics.roc_auc(y, p) == 1.0
    assert np.isfinite([fitted[k] for k in ("val_log_loss_after", "val_ece_after")]).all()


def test_no_calibration_without_both_classes():
    assert calibration.fit(np.ones(10), np.linspace(-1, 1, 10)) is None
    z = np.array([-30.0, -1.0, 0.0, 2.0, 40.0])
    np.testing.assert_allclose(calibration.calibrated(z, None), expit(z))
    fitted = calibration.fit(np.array([0, 0, 0, 1, 1, 1]), np.array([-2.0, -1, 0.5, -0.5, 1, 2]))
    assert fitted["method"] != "platt" and fitted["cv_log_loss"]["platt"] is not None
    fitted = calibration.fit(np.array([0, 0, 0, 0, 1]), np.array([-2.0, -1, 0.5, -0.5, 1]))
    cv = fitted["cv_log_loss"]
    assert fitted["method"] == "temperature" and (cv["temperature"], cv["platt"]) == (None, None)


# ---------------------------------------------------------------------------- measures of calibration
def ece_by_hand(y, p, bins=15):
    total = 0.0
    for k in range(bins):
        inside = (p >= k / bins) & (p < (k + 1) / bins) if k < bins - 1 else p >= k / bins
        total += abs(p[inside].sum() - y[inside].sum())
    return total / len(p)


def test_measures_row_by_row_equal_the_measures_one_by_one_and_scikit_learn():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, (50, 40))
    p = np.clip(rng.random((50, 40)).round(2), 0, 1)  # P of exactly 0 and 1 too
    p[0, :3] = [0.0, 1.0, 1 / 15]
    for measure in (calibration.ece, calibration.brier, calibration.log_loss):
        rows = measure(y, p)
        assert rows.shape == (50,)
        np.testing.assert_allclose(rows, [measure(y[i], p[i]) for i in range(50)], rtol=1e-12)
    for i in range(50):
        assert calibration.ece(y[i], p[i]) == pytest.approx(ece_by_hand(y[i], p[i]))
        assert calibration.brier(y[i], p[i]) == pytest.approx(skm.brier_score_loss(y[i], p[i]))
        q = np.clip(p[i], calibration.EPS, 1 - calibration.EPS)
        assert calibration.log_loss(y[i], p[i]) == pytest.approx(skm.log_loss(y[i], q, labels=[0, 1]))
    assert calibration.ece([0, 1, 1, 0], [0.0, 1.0, 1.0, 0.0]) == 0.0


def test_ece_of_a_bootstrap_stays_small_in_memory():
    """evaluate.py bootstraps the ECE: per resample one number, not a (photos x bins) table."""
    y, z = logits(300, 0.2, 0)
    tracemalloc.start()
    try:
        low, high = metrics.bootstrap_ci(y, expit(z), 20_000, 0, metric_fn=calibration.ece)["value"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150e6, f"peak {peak / 1e6:.0f} MB"
    assert low <= calibration.ece(y, expit(z)) <= high


def test_reliability_bins():
    rng = np.random.default_rng(5)
    p = np.r_[rng.random(500), 1.0, 0.0]
    y = (rng.random(502) < p).astype(int)
    bins = calibration.reliability(y, p)
    assert sum(n for _, _, n in bins) == 502 and len(bins) == calibration.BINS
    for k, (mean_p, share, n) in enumerate(bins):
        inside = calibration.bin_index(p) == k
        assert k / 15 <= mean_p <= (k + 1) / 15 and n == inside.sum()
        assert mean_p == pytest.approx(p[inside].mean()) and share == pytest.approx(y[inside].mean())
    ece = sum(n * abs(mean_p - share) for mean_p, share, n in bins) / 502
    assert calibration.ece(y, p) == pytest.approx(ece)
    assert [n for _, _, n in calibration.reliability([0, 1, 1], [0.05, 0.95, 1.0])] == [1, 2]  # empty bins left out


def test_no_calibration_where_it_does_not_lower_the_held_out_log_loss():
    """A model that already separates the split with confident, right log-odds: any scaling fitted to Platt's
    smoothed targets predicts held-out photos worse than the model itself, so none is kept (a = 1, b = 0), and
    the card can say so. The model's own log-loss is computed here by hand."""
    y = np.repeat([0, 1], 20)
    z = np.r_[np.linspace(-9, -1, 20), np.linspace(1, 9, 20)]
    fitted = calibration.fit(y, z)
    own = np.mean(np.where(y == 1, -np.log(expit(z)), -np.log(1 - expit(z))))
    assert fitted["cv_log_loss"]["none"] == pytest.approx(own, abs=1e-6)
    assert own < min(fitted["cv_log_loss"]["temperature"], fitted["cv_log_loss"]["platt"])
    assert fitted["method"] == "none" and (fitted["a"], fitted["b"]) == (1.0, 0.0)
    np.testing.assert_allclose(calibration.calibrated(z, fitted), expit(z))
    assert fitted["val_log_loss_after"] == fitted["val_log_loss_before"]
    for seed in range(1, 4):  # well-calibrated log-odds: the fitted scalings predict held-out photos no better
        y, z = logits(300, 0.5, seed, weighted=False)
        fitted = calibration.fit(y, z)
        assert fitted["method"] == "none"
        assert fitted["cv_log_loss"]["none"] <= min(
            fitted["cv_log_loss"]["temperature"], fitted["cv_log_loss"]["platt"]
        )


def test_type_logits_calibration_is_one_distribution_whose_malignant_types_sum_to_p():
    """With lesion types the calibration scales the type logits (and shifts the malignant ones): the fitted P is
    the malignant types' summed probability in softmax(a * logits + b * malignant), computed here by hand, and
    fitting on the logits equals fitting on the two-class log-odds where each side has one class."""
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    types = np.where(y == 1, rng.integers(2, 4, 400), rng.integers(0, 2, 400))
    logits = rng.normal(0, 1, (400, 4)) + 3 * np.eye(4)[types]  # overconfident type logits
    mask = np.array([False, False, True, True])
    fitted = calibration.fit(y, logits, mask)
    a, b = fitted["a"], fitted["b"]
    e = np.exp(a * logits + b * mask)
    by_hand = e[:, mask].sum(1) / e.sum(1)
    log_odds = np.log(e[:, mask].sum(1)) - np.log(e[:, ~mask].sum(1))
    assert np.mean(-np.log(np.where(y == 1, by_hand, 1 - by_hand))) == pytest.approx(fitted["val_log_loss_after"])
    assert calibration.calibrated(log_odds - b, dict(a=1.0, b=b)) == pytest.approx(by_hand)
    assert fitted["applies_to"] == "logits" and fitted["method"] != "none"
    two = rng.normal(0, 2, (300, 2))
    y2 = (rng.random(300) < expit(0.5 * (two[:, 1] - two[:, 0]))).astype(int)
    on_logits, on_z = calibration.fit(y2, two, np.array([False, True])), calibration.fit(y2, two[:, 1] - two[:, 0])
    assert (on_logits["a"], on_logits["b"]) == pytest.approx((on_z["a"], on_z["b"]), rel=1e-6, abs=1e-9)
