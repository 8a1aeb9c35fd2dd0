"""The images that are plainly not lesions (skinlesion/non_lesions.py): every kind, n of each, photo-shaped RGB,
not blank, and the same pixels for the same seed (training and the measurements draw them by seed)."""

import numpy as np

from skinlesion import non_lesions


def test_each_kind_is_drawn_n_times_the_same_for_one_seed_and_otherwise_for_another():
    drawn = non_lesions.images(3, seed=4)
    assert [kind for kind, _ in drawn] == [kind for kind in non_lesions.KINDS for _ in range(3)]
    assert all(img.mode == "RGB" and img.size == non_lesions.SIZE for _, img in drawn)
    again, other = non_lesions.images(3, seed=4), non_lesions.images(3, seed=5)
    pixels = [np.asarray(img) for _, img in drawn]
    assert all(np.array_equal(a, np.asarray(b)) for a, (_, b) in zip(pixels, again))
    changed = [not np.array_equal(a, np.asarray(b)) for a, (_, b) in zip(pixels, other)]
    assert sum(changed) >= len(changed) - 3  # a flat colour may repeat; the drawings do not
    varied = [kind for (kind, _), a in zip(drawn, pixels) if a.std(axis=(0, 1)).max() > 5]
    assert set(varied) == set(non_lesions.KINDS) - {"flat_colour"}  # every other kind draws something


def test_a_subset_of_kinds_is_drawn_as_within_all_kinds():
    some, everything = non_lesions.images(2, seed=4, kinds=["scene", "text"]), dict(non_lesions.images(2, seed=4))
    assert [kind for kind, _ in some] == ["scene", "scene", "text", "text"]
    assert np.array_equal(np.asarray(some[1][1]), np.asarray(everything["scene"]))  # the last of each kind
