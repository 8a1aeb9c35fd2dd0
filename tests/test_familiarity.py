"""The familiarity measure (skinlesion/familiarity.py) against a direct computation: the Mahalanobis distance to the
nearest class mean with scikit-learn's Ledoit-Wolf covariance, inverted by numpy; its limit's coverage of the
validation photos; the torch twin that the ONNX graph holds. The trained model's flags (a flat grey photo, its own
test photos) are tested in tests/test_predict_familiarity.py."""

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from skinlesion import familiarity


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
    means, whitening, floor = familiarity.fit(train, labels, 2)
    assert whitening.shape == (24, 24) and floor == 0  # RANK >= d: the full whitening
    new = np.concatenate([train[:5], rng.normal(0, 5, (20, train.shape[1]))])
    expected = direct_distances(new, train, labels)
    assert np.allclose(familiarity.distances(new, means, whitening), expected, rtol=1e-9)
    assert expected.min() > 0 and np.ptp(expected) > 1  # the comparison can fail


def test_more_features_than_photos_still_gives_a_distance():
    """More features than photos (B0 has 1792 and a small run 60 photos): the shrunk covariance is invertible."""
    rng = np.random.default_rng(1)
    train, labels = rng.normal(0, 1, (30, 300)), np.arange(30) % 2
    arrays = familiarity.fit(train, labels, 2, rank=300)
    new = rng.normal(0, 1, (4, 300))
    got = familiarity.distances(new, *arrays)
    assert np.isfinite(got).all() and np.allclose(got, direct_distances(new, train, labels), rtol=1e-6)
    far = familiarity.distances(train[:4] + 10, *arrays)
    assert (far > got.max()).all()


def test_the_limit_holds_99_percent_of_the_validation_photos_and_flags_a_shift():
    rng = np.random.default_rng(2)
    train, labels = gaussian_features(np.random.default_rng(3), 2000)
    val, _ = gaussian_features(np.random.default_rng(3), 2000)  # same means and covariance (same seed), new draws
    arrays = familiarity.fit(train, labels, 2)
    val_distances = familiarity.distances(val[1000:], *arrays)
    found = familiarity.summary(val_distances, ["dermoscopic"])
    assert found["val_within"] >= 0.99 and np.mean(val_distances <= found["limit"]) == found["val_within"]
    assert np.mean(val_distances < found["limit"]) < 0.995  # the 99th percentile, not the maximum
    assert found["limit"] == pytest.approx(np.sort(val_distances)[int(0.99 * (len(val_distances) - 1))], rel=0.05)
    shifted = familiarity.distances(val[:200] + rng.normal(0, 4, val.shape[1]), *arrays)
    assert np.mean(shifted > found["limit"]) > 0.95
    meta = {"familiarity": found}
    assert familiarity.unfamiliar(found["limit"] * 1.01, meta) and not familiarity.unfamiliar(found["limit"], meta)
    assert familiarity.unfamiliar(float("nan"), meta) and not familiarity.unfamiliar(1e9, {})


def test_the_torch_twin_gives_the_same_distances():
    import torch

    rng = np.random.default_rng(4)
    train, labels = gaussian_features(rng, 400, d=64, classes=3)
    means, whitening, floor = familiarity.fit(train, labels, 3)
    new = rng.normal(0, 3, (10, 64))
    got = familiarity.torch_distances(*(torch.tensor(a, dtype=torch.float32) for a in (new, means, whitening)))
    assert np.allclose(got.numpy(), direct_distances(new, train, labels), rtol=1e-4)
    train, labels = rng.normal(0, 1, (40, 300)) * np.linspace(0.2, 3, 300), np.arange(40) % 3  # low rank, exact
    means, whitening, floor = familiarity.fit(train, labels, 3, rank=64)
    new = np.concatenate([train[:4], rng.normal(0, 3, (6, 300))])
    low = (torch.tensor(a, dtype=torch.float32) for a in (new, means, whitening))
    got = familiarity.torch_distances(*low, floor)
    assert whitening.shape == (300, 64) and np.allclose(got.numpy(), direct_distances(new, train, labels), rtol=1e-4)


def test_the_sentence_names_the_training_image_types():
    meta = {"familiarity": {"image_types": ["clinical: overview"]}}
    assert familiarity.unfamiliar_sentence(meta) == (
        "the photo does not look like the clinical: overview photos the model learned from"
    )
    both = {"familiarity": {"image_types": ["clinical: overview", "dermoscopic"]}}
    assert "clinical: overview or dermoscopic photos" in familiarity.unfamiliar_sentence(both)


def test_past_max_photos_a_seeded_sample_is_fitted():
    assert familiarity.sampled(5, most=5).tolist() == [0, 1, 2, 3, 4]  # all, in order, up to the bound
    picked = familiarity.sampled(1000, most=50, seed=3)
    assert len(set(picked.tolist())) == 50 and (np.diff(picked) > 0).all() and 0 <= picked.min() <= picked.max() < 1000
    assert (familiarity.sampled(1000, most=50, seed=3) == picked).all()
    assert not (familiarity.sampled(1000, most=50, seed=4) == picked).all()


def test_the_fit_sees_only_the_sample_with_its_own_labels(monkeypatch):
    """fit_on_photos on 40 training and 30 validation photos with MAX_PHOTOS = 8: the features are asked for 8
    of each, and the means are those of the sampled photos' own classes (a label shifted by one would move them)."""
    monkeypatch.setattr(familiarity, "MAX_PHOTOS", 8)
    asked = []

    def features_of_photos(net, paths, meta, blobs=None, **load):
        asked.append(list(paths))
        return np.array([[float(p.split("_")[1]), 1.0] for p in paths])  # feature 0: the photo's number

    monkeypatch.setattr(familiarity, "features_of_photos", features_of_photos)
    train = [f"train_{i}" for i in range(40)]
    labels = np.arange(40) % 2  # odd numbers are class 1
    meta = {"classes": ["benign", "malignant"]}
    found, means, *_ = familiarity.fit_on_photos(
        None, meta, "no-such-dir", train, labels, [f"val_{i}" for i in range(30)]
    )
    kept = [train[i] for i in familiarity.sampled(40, 8)]
    assert asked[0] == kept and len(asked[1]) == 8 and found["n_val"] == 8
    numbers = np.array([int(p.split("_")[1]) for p in kept])
    assert means[:, 0].tolist() == [numbers[numbers % 2 == 0].mean(), numbers[numbers % 2 == 1].mean()]


def test_the_low_rank_distance_is_exact_when_the_photos_are_fewer_than_its_rank():
    """30 photos of 300 features: the sample covariance has rank <= 28, so past it Ledoit-Wolf's eigenvalues are
    all its shrinkage floor and RANK = 40 loses nothing; RANK = 10 (below that rank) is an approximation."""
    rng = np.random.default_rng(5)
    train, labels = rng.normal(0, 1, (30, 300)) * np.linspace(0.5, 2, 300), np.arange(30) % 2
    means, whitening, floor = familiarity.fit(train, labels, 2, rank=40)
    assert whitening.shape == (300, 40) and floor > 0
    new = np.concatenate([train[:5], rng.normal(0, 2, (20, 300)), train[5:10] * 3])
    expected = direct_distances(new, train, labels)
    assert np.allclose(familiarity.distances(new, means, whitening, floor), expected, rtol=1e-6)
    assert not np.allclose(familiarity.distances(new, *familiarity.fit(train, labels, 2, rank=10)), expected, rtol=1e-3)


def test_the_low_rank_distance_approximates_the_full_one_when_photos_outnumber_features():
    """3000 photos of 200 features, a few strong directions over noise (as a network's features): RANK = 32 of 200
    keeps every distance within 10% of the direct one (the tail eigenvalues differ, their mean stands for them)."""
    rng = np.random.default_rng(6)
    loadings = rng.normal(0, 1, (8, 200)) * 4
    labels = rng.integers(0, 2, 3000)
    train = rng.normal(0, 1, (3000, 8)) @ loadings + rng.normal(0, 1, (3000, 200)) + labels[:, None] * 2
    new = np.concatenate([train[:100], rng.normal(0, 1, (50, 8)) @ loadings + rng.normal(0, 2, (50, 200))])
    expected = direct_distances(new, train, labels)
    got = familiarity.distances(new, *familiarity.fit(train, labels, 2, rank=32))
    error = np.abs(got - expected) / expected
    assert error.max() < 0.10 and np.median(error) > 1e-4  # close, and not exact: the approximation is exercised


def test_an_older_file_with_a_full_whitening_and_no_floor_gives_the_same_distances(monkeypatch):
    """A model file written before the floor keeps a d x d whitening and no floor: it loads (arrays_fault) and
    distances_of gives the Mahalanobis distance from it, as load_checkpoint hands the arrays over."""
    import torch

    rng = np.random.default_rng(7)
    train, labels = gaussian_features(rng, 300, d=40)
    means, whitening, _ = familiarity.fit(train, labels, 2, rank=40)
    older = familiarity.state(means, whitening)
    del older["floor"]
    assert familiarity.arrays_fault(older, 2) is None
    new = rng.normal(0, 3, (6, 40))
    monkeypatch.setattr(familiarity, "features", lambda net, x: (torch.from_numpy(new), None))
    meta = {"familiarity": dict(limit=1.0, **{key: value.double().numpy() for key, value in older.items()})}
    got = familiarity.distances_of(None, torch.zeros(6, 3, 8, 8), meta)
    assert np.allclose(got, direct_distances(new, train, labels), rtol=1e-5)


def test_broken_familiarity_arrays_are_refused():
    import torch

    def arrays(width=3, floor=2.0, d=8):
        found = {"means": torch.zeros(2, d), "whitening": torch.ones(d, width)}
        return found if floor is None else dict(found, floor=torch.tensor(floor))

    assert familiarity.arrays_fault(arrays(), 2) is None
    assert familiarity.arrays_fault(arrays(8, 0.0), 2) is None and familiarity.arrays_fault(arrays(8, None), 2) is None
    assert familiarity.arrays_fault(arrays(8), 2) is None  # k = d with a floor: still a whitening and a floor
    refused = {
        "wider than d": (arrays(9), "its familiarity means (2, 8) and whitening (8, 9) do not fit"),
        "no columns": (arrays(0), "its familiarity means (2, 8) and whitening (8, 0) do not fit"),
        "floor 0, not d x d": (arrays(7, 0.0), "its familiarity whitening (8, 7) has no floor: it must be 8 x 8"),
        "no floor, not d x d": (arrays(7, None), "its familiarity whitening (8, 7) has no floor: it must be 8 x 8"),
        "negative floor": (arrays(floor=-1e-6), "its familiarity floor"),
        "NaN floor": (arrays(floor=float("nan")), "its familiarity floor"),
        "infinite floor": (arrays(floor=float("inf")), "its familiarity floor"),
        "two floors": (dict(arrays(), floor=torch.ones(2)), "its familiarity floor"),
        "floor not a tensor": (dict(arrays(), floor=2.0), "its familiarity floor"),
    }
    for name, (found, expected) in refused.items():
        fault = familiarity.arrays_fault(found, 2)
        assert fault is not None and fault.startswith(expected), name
