"""The familiarity measure (skinlesion/familiarity.py): its limit's coverage of the validation photos; the exposure
head and the two views' scaling against a direct computation; the torch twin that the ONNX graph holds; the model
file's checks of its arrays; a model trained on the demo flags the demo's other image type and drawn non-lesions,
passes its own test photos, and exports with the default tolerance. A small model's flags in predict.py (a flat
grey photo, its own test photos) are tested in tests/test_predict.py."""

import os

import numpy as np
import pytest
from test_mahalanobis import direct_distances, gaussian_features

import export_onnx
import make_demo_data
import model
from conftest import direct_familiarity_distance, run
from skinlesion import familiarity, model_file, non_lesions, photos


def test_the_limit_holds_99_percent_of_the_validation_photos_and_flags_a_shift():
    rng = np.random.default_rng(2)
    train, labels = gaussian_features(np.random.default_rng(3), 2000)
    val, _ = gaussian_features(np.random.default_rng(3), 2000)  # same means and covariance (same seed), new draws
    arrays = familiarity.mahalanobis.fit(train, labels, 2)
    val_distances = familiarity.mahalanobis.distances(val[1000:], *arrays)
    found = familiarity.summary(val_distances, ["dermoscopic"])
    assert found["val_within"] >= 0.99 and np.mean(val_distances <= found["limit"]) == found["val_within"]
    assert np.mean(val_distances < found["limit"]) < 0.995  # the 99th percentile, not the maximum
    assert found["limit"] == pytest.approx(np.sort(val_distances)[int(0.99 * (len(val_distances) - 1))], rel=0.05)
    shifted = familiarity.mahalanobis.distances(val[:200] + rng.normal(0, 4, val.shape[1]), *arrays)
    assert np.mean(shifted > found["limit"]) > 0.95
    meta = {"familiarity": found}
    assert familiarity.unfamiliar(found["limit"] * 1.01, meta) and not familiarity.unfamiliar(found["limit"], meta)
    assert familiarity.unfamiliar(float("nan"), meta) and not familiarity.unfamiliar(1e9, {})


def test_the_torch_twin_gives_the_same_distances():
    import torch

    rng = np.random.default_rng(4)
    train, labels = gaussian_features(rng, 400, d=64, classes=3)
    means, whitening, floor = familiarity.mahalanobis.fit(train, labels, 3)
    new = rng.normal(0, 3, (10, 64))
    graph, floor = familiarity.graph_arrays(dict(means=means, whitening=whitening, floor=floor))
    got = familiarity.torch_distances(torch.tensor(new, dtype=torch.float32), floor=floor, **graph)
    assert set(graph) == {"means", "whitening"} and floor == 0  # a full whitening, as it is
    assert np.allclose(got.numpy(), direct_distances(new, train, labels), rtol=1e-4)
    train, labels = rng.normal(0, 1, (40, 300)) * np.linspace(0.2, 3, 300), np.arange(40) % 3  # low rank, exact
    means, whitening, floor = familiarity.mahalanobis.fit(train, labels, 3, rank=64)
    new = np.concatenate([train[:4], rng.normal(0, 3, (6, 300))])
    graph, floor = familiarity.graph_arrays(dict(means=means, whitening=whitening, floor=floor))
    got = familiarity.torch_distances(torch.tensor(new, dtype=torch.float32), floor=floor, **graph)
    assert whitening.shape == (300, 40) and np.allclose(got.numpy(), direct_distances(new, train, labels), rtol=1e-4)
    assert set(graph) == {"means", "basis", "precisions"} and graph["basis"].shape == (300, 40)  # 40 photos


def test_the_float32_distance_stays_within_its_rounding_where_the_spectrum_is_wide():
    """floor |x|^2 - |x W|^2 in float32 cancels where a few directions hold most of the variance (a small model's
    features: 1e-3 relative, over export_onnx.py's 1e-4); the sum of terms >= 0 that the graph computes stays
    within 1e-5 of the float64 distance, and the cancelling form (computed here) does not."""
    import torch

    rng = np.random.default_rng(8)
    scales = np.r_[np.full(10, 300.0), np.ones(190)]  # 10 strong directions over noise: variances 1e5 and 1
    train, labels = rng.normal(0, 1, (2000, 200)) * scales, np.arange(2000) % 2
    means, whitening, floor = familiarity.mahalanobis.fit(train, labels, 2, rank=50)
    new = rng.normal(0, 1, (64, 200)) * scales * 1.5
    exact = familiarity.mahalanobis.distances(new, means, whitening, floor)
    graph, floor32 = familiarity.graph_arrays(dict(means=means, whitening=whitening, floor=floor))
    got = familiarity.torch_distances(torch.tensor(new, dtype=torch.float32), floor=floor32, **graph).double().numpy()
    assert np.abs(got / exact - 1).max() < 1e-5
    f32 = [torch.tensor(a, dtype=torch.float32) for a in (new, means, whitening)]
    centred = f32[0][:, None, :] - f32[1][None]
    cancelling = (floor * centred.square().sum(-1) - (centred @ f32[2]).square().sum(-1)).amin(1).sqrt().double()
    assert np.abs(cancelling.numpy() / exact - 1).max() > 1e-4  # the test can fail: the old form is off


def test_the_sentence_names_the_training_image_types():
    meta = {"familiarity": {"image_types": ["clinical: overview"]}}
    assert familiarity.unfamiliar_sentence(meta) == (
        "the photo does not look like the clinical: overview photos the model learned from"
    )
    both = {"familiarity": {"image_types": ["clinical: overview", "dermoscopic"]}}
    assert "clinical: overview or dermoscopic photos" in familiarity.unfamiliar_sentence(both)


def test_training_says_what_the_head_learned_from_or_that_there_is_none():
    found = dict(limit=1.234, quantile=0.99, val_within=0.99, n_val=60)
    head = dict(found, exposed_to={"dermoscopic photos": 24, "images that are not lesions (drawn)": 192})
    assert familiarity.limit_text(head) == (
        "a photo further than 1.23 from the training photos (the larger of the Mahalanobis distance of its features "
        "to the nearest class mean and an exposure head's score, each 1 at 99% of the training photos; 99% of the 60 "
        "validation photos lie within) is unfamiliar and gets no answer; the head learned from 24 dermoscopic photos, "
        "192 images that are not lesions (drawn)"
    )
    alone = familiarity.limit_text(found)
    assert alone.startswith("a photo further than 1.23 from the training photos (the Mahalanobis distance of its")
    assert alone.endswith("the dataset has no photo of another kind (prepare_dataset.py keeps some where the export "
                          "has them): the distance alone, which misses many photos of another kind "
                          "(docs/measurements.md)")  # fmt: skip


def test_past_max_photos_a_seeded_sample_is_fitted():
    assert familiarity.sampled(5, most=5).tolist() == [0, 1, 2, 3, 4]  # all, in order, up to the bound
    picked = familiarity.sampled(1000, most=50, seed=3)
    assert len(set(picked.tolist())) == 50 and (np.diff(picked) > 0).all() and 0 <= picked.min() <= picked.max() < 1000
    assert (familiarity.sampled(1000, most=50, seed=3) == picked).all()
    assert not (familiarity.sampled(1000, most=50, seed=4) == picked).all()


def test_the_fit_sees_only_the_sample_with_its_own_labels(monkeypatch):
    """folds.familiarity_photos then fit_on_photos on 40 training and 30 validation photos (a folder, MAX_PHOTOS = 8):
    the features are asked for 8 of each, and the means are those of the sampled photos' own classes (a label
    shifted by one would move them)."""
    from types import SimpleNamespace

    from skinlesion import folds

    monkeypatch.setattr(familiarity, "MAX_PHOTOS", 8)
    asked = []

    def features_of_photos(net, paths, meta, blobs=None, **load):
        asked.append(list(paths))
        return np.array([[float(p.split("_")[1]), 1.0] for p in paths])  # feature 0: the photo's number

    monkeypatch.setattr(familiarity, "features_of_photos", features_of_photos)
    negatives = np.array([[100.0 + i, -5.0] for i in range(6)])
    monkeypatch.setattr(familiarity, "negative_features", lambda *a, **k: (negatives, {"drawn": 6}))
    train = [f"train_{i}" for i in range(40)]
    labels = np.arange(40) % 2  # odd numbers are class 1
    meta = {"classes": ["benign", "malignant"]}
    val = [f"val_{i}" for i in range(30)]
    run = SimpleNamespace(args=SimpleNamespace(data_dir="no-such-dir"), pool=None)
    photos, others = folds.familiarity_photos(run, (train, labels), (val, np.zeros(30, dtype=int)))
    assert others == {} and photos[0][2] is None and photos[1][2] is None  # a folder's photos are read as files
    found, arrays = familiarity.fit_on_photos(None, meta, *photos, others, device="cpu")
    kept = [train[i] for i in familiarity.sampled(40, 8)]
    assert asked[0] == kept and len(asked[1]) == 8 and found["n_val"] == 8 and found["exposed_to"] == {"drawn": 6}
    numbers = np.array([int(p.split("_")[1]) for p in kept])
    assert arrays["means"][:, 0].tolist() == [numbers[numbers % 2 == 0].mean(), numbers[numbers % 2 == 1].mean()]
    assert arrays["centre"].tolist() == [numbers.mean(), 1.0]  # the head is fitted on the sample too


def test_an_older_file_with_a_full_whitening_and_no_floor_gives_the_same_distances(monkeypatch):
    """A model file written before the floor keeps a d x d whitening and no floor: it loads (arrays_fault) and
    distances_of gives the Mahalanobis distance from it, as load_checkpoint hands the arrays over."""
    import torch

    rng = np.random.default_rng(7)
    train, labels = gaussian_features(rng, 300, d=40)
    means, whitening, _ = familiarity.mahalanobis.fit(train, labels, 2, rank=40)
    older = familiarity.state(dict(means=means, whitening=whitening))
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


def test_a_broken_exposure_head_is_refused_and_a_whole_one_accepted():
    """The head's arrays are checked as the rest: all four or none, each of its shape, finite, the scale > 0, no
    key the measure does not know. The nearest accepted: the whole head with its bias as a number or one value."""
    import torch

    def head(d=8, **changed):
        found = dict(centre=torch.zeros(d), scale=torch.ones(d), weights=torch.ones(d), bias=torch.tensor(-1.0))
        found.update(means=torch.zeros(2, d), whitening=torch.ones(d, 3), floor=torch.tensor(2.0))
        return dict(found, **changed)

    assert familiarity.arrays_fault(head(), 2) is None and familiarity.arrays_fault(head(bias=torch.ones(1)), 2) is None
    without = {k: v for k, v in head().items() if k != "bias"}
    refused = {
        "a head without its bias": (without, "its familiarity head has centre, scale, weights without bias"),
        "weights of another length": (head(weights=torch.ones(7)), "its familiarity head's centre, scale, weights"),
        "two biases": (head(bias=torch.ones(2)), "its familiarity head's centre, scale, weights"),
        "a bias that is not a tensor": (head(bias=-1.0), "its familiarity head's centre, scale, weights"),
        "NaN weights": (head(weights=torch.full((8,), float("nan"))), "its familiarity head holds NaN"),
        "infinite centre": (head(centre=torch.full((8,), float("inf"))), "its familiarity head holds NaN"),
        "a scale of 0": (head(scale=torch.zeros(8)), "its familiarity head holds NaN or infinite values, or a scale"),
        "an unknown array": (head(extra=torch.ones(8)), "its familiarity holds extra, which is not one of means"),
    }
    for name, (found, expected) in refused.items():
        fault = familiarity.arrays_fault(found, 2)
        assert fault is not None and fault.startswith(expected), (name, fault)


def exposure_data(rng, d=30):
    """(train, labels, negatives, nearby, own): training features of two classes; negatives, photos of another kind
    close by (a shift of 1.5 standard deviations in 10 of d directions) that the head learns from; nearby, new draws of
    that kind; own, new draws like the training features."""
    shift = np.r_[np.full(5, 1.5), np.full(5, -1.5), np.zeros(d - 10)]  # across the classes' direction

    def draw(n, moved=0.0):
        labels = rng.integers(0, 2, n)
        return rng.normal(0, 1, (n, d)) + labels[:, None] * 0.8 + moved * shift, labels

    (train, labels), (negatives, _), (nearby, _), (own, _) = draw(600), draw(300, 1), draw(400, 1), draw(4000)
    return train, labels, negatives, nearby, own


def test_the_head_catches_another_kind_close_by_that_the_distance_misses():
    """Photos of another kind close by (gaussian features): the Mahalanobis distance alone (fit without negatives)
    flags few of them at its limit; with the head (fit with negatives of that kind, scored on new draws of it) most;
    both at the limit chosen on held-out own draws (99%), which flag about 1% of new own draws."""
    rng = np.random.default_rng(10)
    train, labels, negatives, nearby, own = exposure_data(rng)
    val, fresh = own[:1000], own[1000:]
    alone = familiarity.fit(train, labels, 2)
    assert set(alone) == {"means", "whitening", "floor"}
    direct = familiarity.mahalanobis.distances(fresh, alone["means"], alone["whitening"], alone["floor"])
    assert np.array_equal(familiarity.distances(fresh, alone), direct)
    both = familiarity.fit(train, labels, 2, negatives)
    flagged = {}
    for name, arrays in (("alone", alone), ("both", both)):
        limit = familiarity.choose_limit(familiarity.distances(val, arrays))
        flagged[name] = [np.mean(familiarity.distances(x, arrays) > limit) for x in (fresh, nearby)]
    assert flagged["alone"][1] < 0.5 and flagged["both"][1] > 0.9, flagged
    assert flagged["alone"][0] < 0.025 and flagged["both"][0] < 0.025, flagged


def test_each_view_is_1_where_99_percent_of_photos_like_the_training_ones_lie_and_the_distance_is_the_larger():
    """fit scales the views on the training photos' out-of-fold scores: on new draws like the training ones, about
    QUANTILE lie within 1 on the Mahalanobis view and on the head's; the distance is the larger of the two, each
    computed here from the arrays (the head: clip((f - centre) / scale, +-CLIP) . weights + bias)."""
    rng = np.random.default_rng(11)
    train, labels, negatives, nearby, own = exposure_data(rng)
    arrays = familiarity.fit(train, labels, 2, negatives)
    precision = arrays["floor"] * np.eye(30) - arrays["whitening"] @ arrays["whitening"].T
    if not arrays["floor"]:
        precision = arrays["whitening"] @ arrays["whitening"].T
    x = np.concatenate([own, nearby])
    view = np.min([np.sqrt(np.einsum("nd,de,ne->n", x - m, precision, x - m)) for m in arrays["means"]], axis=0)
    z = np.clip((x - arrays["centre"]) / arrays["scale"], -familiarity.CLIP, familiarity.CLIP)
    head = z @ arrays["weights"] + arrays["bias"]
    assert np.allclose(familiarity.distances(x, arrays), np.maximum(view, head), rtol=1e-9)
    for within in (np.mean(view[: len(own)] <= 1), np.mean(head[: len(own)] <= 1)):
        assert 0.97 <= within <= 0.999, within  # 99% on out-of-fold scores; new draws lie a little further


def test_the_torch_twin_with_a_head_gives_the_same_distances():
    import torch

    rng = np.random.default_rng(12)
    train, labels, negatives, nearby, own = exposure_data(rng)
    arrays = familiarity.fit(train, labels, 2, negatives, rank=10)
    x = np.concatenate([own[:20], nearby[:20], rng.normal(0, 30, (5, 30))])  # some far away: clipped
    graph, floor = familiarity.graph_arrays(arrays)
    got = familiarity.torch_distances(torch.tensor(x, dtype=torch.float32), floor=floor, **graph).double().numpy()
    assert set(familiarity.HEAD) <= set(graph) and arrays["whitening"].shape == (30, 10)
    assert np.allclose(got, familiarity.distances(x, arrays), rtol=1e-5)


# ---------------------------------------------------------------------------- a model trained on the demo
@pytest.fixture(scope="module")
def demo_96(demo_dataset, tmp_path_factory):
    """(checkpoint, AItraining.py's stdout): the scratch recipe on the demo set, which keeps its dermoscopic photos
    in other_types/ (skinlesion/other_types.py), 96 px, 3 epochs: a fresh small model with an exposure head."""
    folder = tmp_path_factory.mktemp("demo96")
    args = ["--data-dir", demo_dataset, "--no-pretrained", "--image-size", 96, "--batch-size", 16, "--epochs", 3]
    r = run("AItraining.py", *args, "--num-workers", 0, "--folds", 1, cwd=folder, threads=2)  # one split
    assert r.returncode == 0, r.stdout + r.stderr
    return str(folder / "skin_model.pth"), r.stdout


def dermoscopic_drawings(folder, n=12):
    """n new dermoscopic photos drawn as the demo draws its own (make_demo_data.py), from seeds the demo never
    uses: photos of the demo's other image type that no fit saw."""
    paths = []
    for k in range(n):
        path = str(folder / f"dermoscopic_{k}.jpg")
        kind = ["nevus", "melanoma", "seborrheic_keratosis", "basal_cell_carcinoma"][k % 4]
        make_demo_data.photo((path, (7777, 1, k), (7777, 2, k), kind, k % 3, 512, "dermoscopic"))
        paths.append(path)
    return paths


def flagged(checkpoint, images):
    """Which of the PIL images the model file's measure calls unfamiliar, as predict.py decides (in this process)."""
    import torch

    net, meta = model.load_checkpoint(checkpoint)
    x = torch.from_numpy(np.stack([photos.preprocess(img, model_file.meta_data_config(meta)) for img in images]))
    return np.array([familiarity.unfamiliar(d, meta) for d in familiarity.distances_of(net, x, meta)])


@pytest.mark.slow
def test_a_demo_model_flags_its_other_image_type_and_drawn_non_lesions_and_passes_its_own_test_photos(
    demo_96, demo_dataset, tmp_path
):
    """The demo model's head learned from the demo's 24 dermoscopic photos and drawn non-lesions (seed 0), and
    training says so; it flags at least 90% of 12 new dermoscopic drawings and 95% of 16 drawn non-lesions of
    another seed, and at most 10% of its own test photos (the limit holds 99% of the validation photos)."""
    checkpoint, out = demo_96
    found = model_meta(checkpoint)["familiarity"]
    assert found["method"] == "mahalanobis+exposure" and found["exposed_to"]["dermoscopic photos"] == 24
    assert "the head learned from 24 dermoscopic photos, 192 images that are not lesions (drawn)" in out
    other = flagged(checkpoint, [photos.load_image(p) for p in dermoscopic_drawings(tmp_path)])
    drawn = flagged(checkpoint, [image for _, image in non_lesions.images(2, seed=7)])
    test = photos.find_images([f"{demo_dataset}/test"])[0]
    own = flagged(checkpoint, [photos.load_image(p) for p in test])
    assert other.mean() >= 0.9 and drawn.mean() >= 0.95 and own.mean() <= 0.1, (other, drawn, own.mean())


def model_meta(checkpoint):
    return model_file.read_checkpoint(checkpoint)["meta"]


@pytest.mark.slow
def test_fresh_small_models_export_with_the_default_tolerance(
    demo_96, trained_model, trained_onnx, demo_dataset, tmp_path, capsys
):
    """The familiarity distance in the float32 graph stays within export_onnx.py's default tolerance on freshly
    trained small models (issue 28: a 96 px model after 3 epochs on the demo differed by 2.75e-4 > 1e-4, and a
    64 px one): both export with the defaults, and the file's distances lie within 1e-4 of the limit from those
    computed here in float64 (conftest.direct_familiarity_distance). The 64 px one is the session's export
    (conftest.trained_onnx: the same defaults and check photos; its int8 twin is not what is tested here)."""
    test = photos.find_images([f"{demo_dataset}/test"])[0][::6]
    path = str(tmp_path / f"{os.path.basename(os.path.dirname(demo_96[0]))}.onnx")
    flags = ["--check-images", f"{demo_dataset}/test", "--no-quantise"]  # the twin is not what is tested
    export_onnx.main(["--model", demo_96[0], "--output", path, *flags])
    exports = [
        (demo_96[0], path, capsys.readouterr().out),
        (trained_model[0], trained_onnx["full"], trained_onnx["stdout"]),
    ]
    for checkpoint, path, said in exports:
        assert "and the familiarity distance (--tolerance 1e-04)" in said
        session, meta = model.load_onnx(path)
        x = np.stack([photos.preprocess(photos.load_image(p), model_file.meta_data_config(meta)) for p in test])
        direct, found = direct_familiarity_distance(checkpoint, test)
        assert np.abs(session.run(["familiarity_distance"], {"image": x})[0] - direct).max() <= 1e-4 * found["limit"]


def test_with_a_precision_floor_the_scaled_mahalanobis_view_is_the_distance_divided_by_its_reach():
    """fit divides the Mahalanobis view by its reach (the QUANTILE of the out-of-fold distances): with a floor (rank
    below d) distance^2 = floor |x|^2 - |x W|^2, so W is divided by the reach and the floor by its square. Kills
    `floor=floor / reach**2` -> `floor / reach` (or the floor left unscaled) in familiarity.fit, which the full
    whitening of test_each_view_is_1_... (floor 0) lets through: the view then is no longer a multiple of the
    distance, and a photo's familiarity depends on its direction."""
    rng = np.random.default_rng(14)
    train, labels, negatives, nearby, own = exposure_data(rng)
    arrays = familiarity.fit(train, labels, 2, negatives, rank=10)
    means, whitening, floor = familiarity.mahalanobis.fit(train, labels, 2, rank=10)
    assert arrays["whitening"].shape == (30, 10) and floor > 0  # a floor, exercised
    reach = np.quantile(familiarity.out_of_fold(train, labels, 2, negatives, rank=10)[0], familiarity.QUANTILE)
    assert reach > 2  # dividing by it or by its square differs
    x = np.concatenate([own[:200], nearby[:200], rng.normal(0, 3, (20, 30))])
    scaled = familiarity.mahalanobis.distances(x, arrays["means"], arrays["whitening"], arrays["floor"])
    assert np.allclose(scaled, familiarity.mahalanobis.distances(x, means, whitening, floor) / reach, rtol=1e-9)


def test_an_older_file_without_a_floor_gives_the_same_distances_in_the_onnx_graph():
    """A model file from before the floor (a d x d whitening, no floor key): graph_arrays takes its floor as 0 and
    the graph computes |x W|. Kills a default floor other than 0 in graph_arrays (`arrays.get("floor", 1.0)`), which
    would export such a file with a precision floor it never had."""
    import torch

    rng = np.random.default_rng(15)
    train, labels = gaussian_features(rng, 300, d=40)
    means, whitening, _ = familiarity.mahalanobis.fit(train, labels, 2, rank=40)
    new = rng.normal(0, 3, (6, 40))
    graph, floor = familiarity.graph_arrays(dict(means=means, whitening=whitening))
    got = familiarity.torch_distances(torch.tensor(new, dtype=torch.float32), floor=floor, **graph).double().numpy()
    assert floor == 0 and np.allclose(got, direct_distances(new, train, labels), rtol=1e-5)


def test_is_unfamiliar_is_the_one_rule_beyond_the_limit_or_nan():
    """familiarity.is_unfamiliar, the rule unfamiliar, summary, the int8 comparison and the measuring tool use
    (web/app.js's isUnfamiliar is checked against it in tests/test_web.py): at the limit familiar, the next float
    above unfamiliar, a NaN distance (or limit) unfamiliar; one answer per photo for an array."""
    limit = 0.7391
    above, below = float(np.nextafter(limit, np.inf)), float(np.nextafter(limit, -np.inf))
    said = [familiarity.is_unfamiliar(d, limit) for d in (float("nan"), limit, above, below, 0.0, float("inf"))]
    assert said == [True, False, True, False, False, True] and all(type(s) is bool for s in said)
    assert familiarity.is_unfamiliar(0.1, float("nan")) is True
    distances = np.array([float("nan"), limit, above, below])
    assert familiarity.is_unfamiliar(distances, limit).tolist() == [True, False, True, False]
    meta = {"familiarity": {"limit": limit}}
    assert [familiarity.unfamiliar(d, meta) for d in distances] == [True, False, True, False]
    found = familiarity.summary([0.2, 0.4, 0.6, 0.8, 1.0], [], quantile=0.5)  # the limit: their median, 0.6
    assert found["limit"] == 0.6 and found["val_within"] == 0.6  # 0.6 itself lies within
