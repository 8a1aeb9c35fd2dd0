"""tools/measure_familiarity.py's held-out table: no refit is scored on what it saw (the other photos' half it
learned from, the drawn kinds it learned from), every photo is scored, and the shares are counted right."""

import measure_familiarity
import numpy as np

from skinlesion import familiarity, non_lesions


def test_the_holdout_rows_score_each_fit_only_on_what_it_did_not_see(monkeypatch):
    rng = np.random.default_rng(14)
    kinds = np.repeat(list(non_lesions.KINDS) + ["docs picture"], 3)
    made_kinds = np.repeat(list(non_lesions.KINDS), 2)
    train, labels = rng.normal(0, 1, (80, 6)), np.arange(80) % 2
    groups = {"test": rng.normal(0, 1, (20, 6)), "other": rng.normal(4, 1, (30, 6))}
    made, scored = rng.normal(8, 1, (len(made_kinds), 6)), rng.normal(8, 1, (len(kinds), 6))
    seen, kept, fitted, scores = {}, [], familiarity.fit, []

    def fit(features, labels, n_classes, negatives=None, rank=None):
        arrays = fitted(features, labels, n_classes, negatives, rank)
        kept.append(arrays)  # alive: its id stays its own
        seen[id(arrays)] = set() if negatives is None else {row.tobytes() for row in negatives}
        return arrays

    def distances(x, arrays):
        scores.append((seen[id(arrays)], x))
        return np.zeros(len(x))

    monkeypatch.setattr(familiarity, "fit", fit)
    monkeypatch.setattr(familiarity, "distances", distances)
    lines = measure_familiarity.holdout_rows((train, labels, 2), rng.normal(0, 1, (10, 6)), groups,
                                             (made, made_kinds), (scored, kinds))  # fmt: skip
    kind_of = {
        row.tobytes(): kind for rows, names in ((made, made_kinds), (scored, kinds)) for row, kind in zip(rows, names)
    }
    for negatives, x in scores:
        rows = {row.tobytes() for row in x}
        assert not rows & negatives  # nothing scored that its fit saw, nor a kind of drawing it learned from
        assert not {kind_of[r] for r in rows if r in kind_of} & {kind_of[r] for r in negatives if r in kind_of}
    assert len(seen) == 1 + 3 + 6 and len(lines) == 4  # the distance alone, drawn (3 kind folds), both (2 x 3)
    halves = [x for negatives, x in scores if len(x) == 15]  # both: each half of the other photos scored once
    assert len(halves) == 2 and not {row.tobytes() for row in halves[0]} & {row.tobytes() for row in halves[1]}
    assert lines[1].split()[:4] == ["distance", "0.0%", "(0/20)", "0.0%"]  # all at 0, within a limit of 0
    assert lines[3].split()[1:] == ["0.0%", "(0/40)", "0.0%", "(0/30)", "0.0%", "(0/54)"]  # 2 halves, 3 + 3 folds


def test_the_rank_rows_compare_each_rank_with_the_full_matrix():
    """measure_familiarity.py --ranks: one row per rank and the full one (rank = d) last, whose distances are the
    full matrix's (no error, no flips); a rank-1 fit of features that vary along several directions differs."""
    rng = np.random.default_rng(0)
    scales = np.linspace(3, 0.2, 16)
    train, labels = rng.normal(size=(300, 16)) * scales, rng.integers(0, 2, 300)
    groups = dict(own=rng.normal(size=(40, 16)) * scales, far=rng.normal(size=(40, 16)) * 10)
    lines = measure_familiarity.rank_rows(train, labels, rng.normal(size=(60, 16)) * scales, groups, [1], 2)
    rank_1, full = lines[1].split(), lines[2].split()
    assert len(lines) == 3 and rank_1[0] == "1" and full[0] == "16"
    assert full[2] == full[3] == "0.00%" and lines[2].endswith("flips 0 (0 outside the band)")
    assert float(rank_1[2].rstrip("%")) > 0
