"""The Mahalanobis distance (skinlesion/mahalanobis.py) against a direct computation: scikit-learn's Ledoit-Wolf
covariance inverted by numpy; the low-rank form, exact where it should be and close where it approximates; its
memory bounded."""

import numpy as np
from sklearn.covariance import LedoitWolf

from skinlesion import mahalanobis


def gaussian_features(rng, n, d=24, classes=2, shift=0.0):
    """(features (n, d), labels): classes at different means, one correlated covariance, shifted by shift."""
    mixing = rng.normal(0, 1, (d, d)) / np.sqrt(d) + np.eye(d)
    means = rng.normal(0, 3, (classes, d))
    labels = rng.integers(0, classes, n)
    return means[labels] + rng.normal(0, 1, (n, d)) @ mixing + shift, labels


def direct_distances(features, train, labels):
    """min over classes of sqrt((f - mean)^T C^-1 (f - mean)), C the Ledoit-Wolf covariance around the class means."""
    means = np.stack([train[labels == c].mean(0) for c in np.unique(labels)])
    precision = np.linalg.inv(LedoitWolf(assume_centered=True).fit(train - means[labels]).covariance_)
    found = [[np.sqrt((f - m) @ precision @ (f - m)) for m in means] for f in features]
    return np.min(found, axis=1)


def test_distance_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(0)
    train, labels = gaussian_features(rng, 300)
    means, whitening, floor = mahalanobis.fit(train, labels, 2)
    assert whitening.shape == (24, 24) and floor == 0  # RANK >= d: the full whitening
    new = np.concatenate([train[:5], rng.normal(0, 5, (20, train.shape[1]))])
    expected = direct_distances(new, train, labels)
    assert np.allclose(mahalanobis.distances(new, means, whitening), expected, rtol=1e-9)
    assert expected.min() > 0 and np.ptp(expected) > 1  # the comparison can fail


def test_more_features_than_photos_still_gives_a_distance():
    """More features than photos (B0 has 1792 and a small run 60 photos): the shrunk covariance is invertible."""
    rng = np.random.default_rng(1)
    train, labels = rng.normal(0, 1, (30, 300)), np.arange(30) % 2
    arrays = mahalanobis.fit(train, labels, 2, rank=300)
    new = rng.normal(0, 1, (4, 300))
    got = mahalanobis.distances(new, *arrays)
    assert np.isfinite(got).all() and np.allclose(got, direct_distances(new, train, labels), rtol=1e-6)
    far = mahalanobis.distances(train[:4] + 10, *arrays)
    assert (far > got.max()).all()


def test_the_low_rank_distance_is_exact_when_the_photos_are_fewer_than_its_rank():
    """30 photos of 300 features: the sample covariance has rank <= 28, so past it Ledoit-Wolf's eigenvalues are
    all its shrinkage floor and RANK = 40 loses nothing (and keeps 30 columns); RANK = 10 (below that rank) is an
    approximation."""
    rng = np.random.default_rng(5)
    train, labels = rng.normal(0, 1, (30, 300)) * np.linspace(0.5, 2, 300), np.arange(30) % 2
    means, whitening, floor = mahalanobis.fit(train, labels, 2, rank=40)
    assert whitening.shape == (300, 30) and floor > 0  # past the 30 photos' directions, nothing to keep
    new = np.concatenate([train[:5], rng.normal(0, 2, (20, 300)), train[5:10] * 3])
    expected = direct_distances(new, train, labels)
    assert np.allclose(mahalanobis.distances(new, means, whitening, floor), expected, rtol=1e-6)
    assert not np.allclose(mahalanobis.distances(new, *mahalanobis.fit(train, labels, 2, rank=10)), expected, rtol=1e-3)


def test_the_low_rank_distance_approximates_the_full_one_when_photos_outnumber_features():
    """3000 photos of 200 features, a few strong directions over noise (as a network's features): RANK = 32 of 200
    keeps every distance within 10% of the direct one (the tail eigenvalues differ, their mean stands for them)."""
    rng = np.random.default_rng(6)
    loadings = rng.normal(0, 1, (8, 200)) * 4
    labels = rng.integers(0, 2, 3000)
    train = rng.normal(0, 1, (3000, 8)) @ loadings + rng.normal(0, 1, (3000, 200)) + labels[:, None] * 2
    new = np.concatenate([train[:100], rng.normal(0, 1, (50, 8)) @ loadings + rng.normal(0, 2, (50, 200))])
    expected = direct_distances(new, train, labels)
    got = mahalanobis.distances(new, *mahalanobis.fit(train, labels, 2, rank=32))
    error = np.abs(got - expected) / expected
    assert error.max() < 0.10 and np.median(error) > 1e-4  # close, and not exact: the approximation is exercised


def test_distances_keep_their_memory_bounded_whatever_the_photos_and_classes(monkeypatch):
    """4000 photos of 300 features and 20 classes: photos x classes x features at once would be 192 MB; a chunk of
    photos and one class at a time keep the peak under 40 MB, and give the distances the direct computation gives
    (CHUNK 1000: several chunks, the last one short)."""
    import tracemalloc

    rng = np.random.default_rng(9)
    train, labels = rng.normal(0, 1, (3000, 300)) + np.arange(3000)[:, None] % 20, np.arange(3000) % 20
    arrays = mahalanobis.fit(train, labels, 20, rank=40)
    new = rng.normal(0, 1.5, (4000, 300)) + rng.integers(0, 20, (4000, 1))
    tracemalloc.start()
    got = mahalanobis.distances(new, *arrays)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40e6, peak
    precision = arrays[2] * np.eye(300) - arrays[1] @ arrays[1].T  # floor I - W W^T
    some = rng.choice(4000, 50, replace=False)
    expected = [min(np.sqrt((new[i] - m) @ precision @ (new[i] - m)) for m in arrays[0]) for i in some]
    assert np.allclose(got[some], expected, rtol=1e-9)
    monkeypatch.setattr(mahalanobis, "CHUNK", 1000)
    assert np.allclose(mahalanobis.distances(new[:3500], *arrays), got[:3500], rtol=1e-12)


def test_with_fewer_photos_than_features_the_eigenpairs_come_from_the_photos_and_agree_with_the_covariances():
    """200 photos of 600 features: the singular value decomposition of the photos (n^2 d) gives the Ledoit-Wolf
    covariance's eigenvalues and, for the largest, its eigenvectors, as the covariance's own (d^3) does; the
    distances at RANK 50 and 150 agree."""
    rng = np.random.default_rng(13)
    train = rng.normal(0, 1, (200, 600)) @ (rng.normal(0, 1, (600, 600)) / 30 + np.diag(np.linspace(3, 0.2, 600)))
    centred = train - train.mean(0)
    values, vectors = mahalanobis.shrunk_eigenpairs(centred)
    full_values, full_vectors = mahalanobis.shrunk_eigenpairs(centred, full=True)
    assert vectors.shape == (600, 200) and full_vectors.shape == (600, 600)
    assert np.allclose(values, full_values, rtol=1e-9)
    alignment = np.abs(np.sum(vectors[:, :150] * full_vectors[:, :150], axis=0))  # the same directions, up to sign
    assert np.allclose(alignment, 1, atol=1e-6)
    new = rng.normal(0, 1, (20, 600)) @ np.diag(np.linspace(3, 0.2, 600))
    labels = np.zeros(200, int)
    for rank in (50, 150):
        fitted = mahalanobis.fit(train, labels, 1, rank=rank)
        values_full = full_values.copy()
        floor = 1 / values_full[rank:].mean()
        whitening = full_vectors[:, :rank] * np.sqrt(np.maximum(floor - 1 / values_full[:rank], 0))
        expected = mahalanobis.distances(new, fitted[0], whitening, floor)
        assert np.allclose(mahalanobis.distances(new, *fitted), expected, rtol=1e-8)
