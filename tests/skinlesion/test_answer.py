"""skinlesion/answer.py: what a user reads of an answer. P is printed with the digits that show its side of the
threshold, never equal to it; the page's twins of these functions are fed the same cases in tests/test_web.py."""

import numpy as np
import pytest

from skinlesion import answer


@pytest.mark.parametrize(
    "p, threshold, expected",
    [
        (0.73, 0.5, ("0.730", "0.500", "")),
        (0.5004, 0.5, ("0.5004", "0.5000", "borderline")),
        (0.49996, 0.5, ("0.49996", "0.50000", "borderline")),
        (0.5000004, 0.5, ("just above 0.500000", "0.500000", "borderline")),  # 6 digits at most, then words
        (0.4822319, 0.482232, ("just below 0.482232", "0.482232", "borderline")),  # never equal beside 'benign'
        (0.48223199999999, 0.482232, ("just below 0.482232", "0.482232", "borderline")),
        (0.5, 0.5, ("0.500000", "0.500000", "borderline")),
        (0.519, 0.5, ("0.519", "0.500", "borderline")),
        (0.521, 0.5, ("0.521", "0.500", "")),
        (0.0004, 0.0, ("0.0004", "0.0000", "borderline")),
        (0.9999, 1.0, ("0.9999", "1.0000", "borderline")),
    ],
)
def test_digits_show_the_side_of_the_threshold(p, threshold, expected):
    assert answer.decision_texts(p, threshold, answer.BORDERLINE) == expected


def test_printed_p_is_on_the_same_side_as_p():
    """P never reads equal to the threshold: digits show the side, or within 6 digits the words 'just below' or
    'just above' do (issue 28: 0.482232 and 0.482232 beside a benign label)."""
    rng = np.random.default_rng(0)
    for _ in range(3000):
        t = rng.uniform(0, 1)
        p = float(np.clip(t + rng.choice([-1, 1]) * 10 ** rng.uniform(-12, -0.3), 0, 1))  # 1e-12 to 0.5 apart
        if p == t:
            continue
        p_text, t_text, near = answer.decision_texts(p, t, answer.BORDERLINE)
        words, _, number = p_text.rpartition(" ")
        assert 3 <= len(number.split(".")[1]) == len(t_text.split(".")[1]) <= 6
        if words:  # equal to 6 digits: said in words, on the right side
            assert number == t_text and words == ("just below" if p < t else "just above")
        else:
            assert (float(p_text) < float(t_text)) == (p < t) and p_text != t_text
        assert abs(float(number) - p) <= 0.5 * 10 ** -len(number.split(".")[1]) + 1e-12
        assert (near == "borderline") == (abs(p - t) < answer.BORDERLINE)


def test_is_borderline_is_the_one_rule_strictly_within_the_margin():
    """answer.is_borderline, the rule decision_texts, predict.py and the int8 comparison use (web/app.js's
    isBorderline is checked against it in tests/test_web.py): within the margin of the threshold, not at it, never
    for a NaN; one answer per photo for an array, and the same numbers as the expression it replaced for float32."""
    t = 0.5
    over = t + answer.BORDERLINE
    at = over - t  # |P - threshold| exactly
    assert answer.is_borderline(over, t, at) is False and answer.is_borderline(over, t, at + 1e-12) is True
    assert answer.is_borderline(over, t, at - 1e-12) is False and answer.is_borderline(t, t) is True
    assert answer.is_borderline(float("nan"), t) is False and answer.is_borderline(t, float("nan")) is False
    assert answer.is_borderline(0.5199, t) and not answer.is_borderline(0.5201, t)  # BORDERLINE is 0.02
    p = np.array([0.48, 0.4801, 0.5, 0.5199, 0.52, float("nan"), 0.9])
    assert answer.is_borderline(p, t).tolist() == (np.abs(p - t) < 0.02).tolist()
    assert answer.is_borderline(p, t).tolist()[1:5] == [True, True, True, False]
    low = np.float32(0.52)  # a float32 P: compared as `abs(p - threshold) < margin` compared it
    assert answer.is_borderline(low, t) == bool(abs(low - t) < answer.BORDERLINE)
    assert [answer.decision_texts(q, t, 0.02)[2] for q in (0.51, 0.53)] == ["borderline", ""]
