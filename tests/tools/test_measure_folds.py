"""tools/measure_folds.py: ECE's own bias (what a perfectly calibrated P scores on few photos), and a row of the
table read from evaluate.py's report: the test figures against the intervals the card states. (The measurement
itself trains for hours: docs/measurements.md.)"""

import measure_folds
import numpy as np
import pytest

from conftest import beta_binomial_range
from skinlesion import metrics


def test_a_calibrated_p_scores_an_ece_that_shrinks_with_the_photos():
    """y drawn from P itself: the ECE left is noise, large on 60 photos spread over 15 bins, small on 6000;
    checked against a direct draw here."""
    p = np.linspace(0.02, 0.98, 60)
    bins = metrics.reliability((p > 0.5).astype(int), p)  # (mean P, share, photos) per bin: only P and photos count
    few = measure_folds.calibrated_ece(bins)
    rng = np.random.default_rng(1)
    direct = np.mean([metrics.ece(rng.random(60) < p, p) for _ in range(2000)])
    assert few == pytest.approx(direct, abs=0.01) and 0.1 < few < 0.25
    many = measure_folds.calibrated_ece([(mean, share, count * 100) for mean, share, count in bins], draws=200)
    assert many < few / 5


def test_a_row_says_whether_the_test_figures_lie_inside_the_stated_intervals():
    """Inside the stated intervals, and within what the test's 30 photos of each class can show (the beta-binomial
    range, summed by hand in conftest), and the test ECE against its calibrated P's limit."""
    report = dict(
        n_images={"benign": 30, "malignant": 30},
        operating_point=dict(
            sensitivity=0.9, sensitivity_ci95=[0.8, 1.0], specificity=0.5, specificity_ci95=[0.3, 0.7]
        ),
        metrics=dict(sensitivity=0.8, specificity=0.8, roc_auc=0.88),
        calibration=dict(ece_after=0.2, bins_after=[(0.25, 0.2, 30), (0.75, 0.8, 30)], ece_after_if_calibrated=0.18),
        familiarity=dict(n_unfamiliar=2, share_unfamiliar=2 / 60),
    )
    report["operating_point"].update(n_malignant=40, n_benign=40)
    row = measure_folds.row_of(3, "refit", report)
    assert row[:9] == [3, "refit", 60, "0.90 [0.80-1.00]", "0.80", "yes", "0.50 [0.30-0.70]", "0.80", "NO"]
    assert row[9] == "0.200" and row[11] == "0.880" and row[12] == "2 (3.3%)"
    chance = measure_folds.inside_chance(0.9, (0.8, 1.0), 30) * measure_folds.inside_chance(0.5, (0.3, 0.7), 30)
    assert row[13] == f"{chance:.2f}"
    for cell, value, stated in ((row[14], 0.8, 0.9), (row[15], 0.8, 0.5)):
        low, high = beta_binomial_range(stated * 40, 40, 30)
        assert cell == f"{'yes' if low <= value <= high else 'NO'} ({100 * low:.0f}-{high:.0%})"
    assert row[14].startswith("yes") and row[15].startswith("NO") and row[16] == "NO (0.180)"
    expected = f"0 of 2 (expected {2 * float(row[13]):.1f})"
    summary = measure_folds.summary([row, row], ["refit"])
    assert summary == [["refit", expected, "0.200", row[10], "0.880", "0 of 2", "0 of 2"]]


def test_the_chance_of_landing_inside_an_interval_is_the_binomial_one():
    """Counted here by hand: 10 photos at a true share of 0.5 land in [0.4, 0.6] with k = 4, 5 or 6."""
    from math import comb

    expected = sum(comb(10, k) for k in (4, 5, 6)) / 2**10
    assert measure_folds.inside_chance(0.5, (0.4, 0.6), 10) == pytest.approx(expected)
    assert (
        measure_folds.inside_chance(0.91, (0.86, 0.95), 30)
        < 0.7
        < 0.95
        < measure_folds.inside_chance(0.9, (0.77, 1.0), 30)
    )
