"""The numbers a user reads, each against a value this file computes on its own (issue 23 section 4): the stored
threshold lives on the calibrated P that predict.py compares with it; an ONNX file keeps Platt's shift b; the
bootstrap interval's level and its resampling range; the validation and the test share of the grouped split, each;
an empty image_type; the balanced sample follows SEED. Each test names the wrong code it catches."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

import AItraining
import evaluate
import model
import predict
import prepare_dataset
from conftest import calibration, fails, lesion_photo, noise_image, save_model, write_export
from skinlesion import evaluation, isic, metrics, photos, sampling, splits


def sigmoid(x):
    """By hand, not through the project's calibration code."""
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


# ---------------------------------------------------------------------------- the threshold training stores
def test_the_stored_threshold_is_chosen_on_the_calibrated_p():
    """A model whose log-odds z are far too low (the truth is 0.5 z + 2.5): its calibration shifts P up a lot.
    The stored threshold, read against P = sigmoid(a z + b) computed here, catches the target share of malignant
    validation photos and gives the stored sensitivity and specificity. Wrong code caught: the operating point
    chosen on the uncalibrated P (its threshold then lies below every malignant photo's calibrated P)."""
    rng = np.random.default_rng(0)
    z = rng.normal(-4, 2, 600)
    y = (rng.random(600) < sigmoid(0.5 * z + 2.5)).astype(int)
    logits = np.stack([np.zeros_like(z), z], 1)  # two classes: the log-odds are the logit difference
    _, kept = AItraining.scored(y, logits, {"classes": ["benign", "malignant"]}, 0.9)
    a, b = kept["calibration"]["a"], kept["calibration"]["b"]
    assert kept["calibration"]["method"] == "platt" and b > 1  # the shift this test is about
    p = sigmoid(a * z + b)
    threshold, op = kept["threshold"], kept["operating_point"]
    caught = p[y == 1] >= threshold
    cleared = p[y == 0] < threshold
    assert threshold == op["threshold"] and caught.mean() >= 0.9
    assert op["sensitivity"] == pytest.approx(caught.mean()) and op["specificity"] == pytest.approx(cleared.mean())
    assert kept["val_metrics"]["sensitivity"] == pytest.approx(caught.mean())
    kth = np.sort(p[y == 1])[::-1][math.ceil(0.9 * (y == 1).sum()) - 1]  # the raw threshold: the k-th highest P
    assert p[y == 1].min() <= threshold <= kth


@pytest.mark.parametrize("shift", [3.0, -3.0])
def test_predict_compares_the_calibrated_p_with_the_threshold(tmp_path, capsys, shift):
    """A network whose log-odds z for the photo is 0 (its head's bias moved), a calibration with b = +-3 and the
    threshold halfway between the uncalibrated P (0.5) and sigmoid(z + b): the label follows the calibrated P, and
    the printed P is sigmoid(z + b) of the network's logits, computed here. Wrong code caught: predict.py (or
    model.predictions) leaving out the calibration, or its shift."""
    import torch

    photo = lesion_photo(tmp_path / "photo.jpg", (80, 64), seed=3)
    net, meta = model.load_checkpoint(save_model(tmp_path / "plain.pth"))
    x = torch.from_numpy(photos.preprocess(photos.load_image(photo), model.meta_data_config(meta)))[None]
    logits = model.view_logits(net, x)[0][0]
    with torch.no_grad():
        net.classifier.bias[1] -= float(logits[1] - logits[0])
    logits = model.view_logits(net, x)[0][0]
    z = logits[1] - logits[0]
    p_raw, p_cal = sigmoid(z), sigmoid(z + shift)
    assert abs(z) < 1e-4
    path = save_model(
        tmp_path / "m.pth", net, threshold=float((p_raw + p_cal) / 2), calibration=calibration(1.0, shift)
    )
    predict.main([photo, "--model", path])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Prediction: {'malignant' if shift > 0 else 'benign'}"
    printed = lines[1].split("= ")[1].split()[0]
    assert float(printed) == pytest.approx(p_cal, abs=10 ** -len(printed.split(".")[1]))


def test_a_photo_whose_p_equals_the_threshold_is_called_malignant(tmp_path, capsys):
    """'Called malignant when it reaches the threshold': the photo's own P (from the model's prediction path, bit
    for bit) as --threshold gives malignant, the next float above it benign. Wrong code caught: p > threshold."""
    import torch

    photo = lesion_photo(tmp_path / "photo.jpg", (80, 64), seed=4)
    path = save_model(tmp_path / "m.pth", calibration=calibration(0.5, 0.2))
    net, meta = model.load_checkpoint(path)
    x = torch.from_numpy(photos.preprocess(photos.load_image(photo), model.meta_data_config(meta)))[None]
    p = float(model.predictions(model.view_logits(net, x), meta)[0][0])
    for threshold, label in [(p, "malignant"), (float(np.nextafter(p, 1)), "benign")]:
        predict.main([photo, "--model", path, "--threshold", repr(threshold)])
        assert capsys.readouterr().out.splitlines()[0] == f"Prediction: {label}"


# ---------------------------------------------------------------------------- Platt's shift in the ONNX file
CALIBRATION = calibration(0.7, 1.3)


def test_the_exported_module_keeps_platts_shift(tmp_path, one_torch_thread):
    """export_onnx.exportable's p_malignant is sigmoid(a (logit malignant - logit benign) + b) with b = 1.3.
    Wrong code caught: an export that drops b (every other ONNX test model has b = 0) or a."""
    import torch

    import export_onnx

    net = model.load_checkpoint(save_model(tmp_path / "m.pth", calibration=CALIBRATION))[0]
    with torch.no_grad():
        net.classifier.weight *= 0.05  # log-odds near 0, where P is not saturated in float32
    meta = dict(classes=["benign", "malignant"], calibration=CALIBRATION)
    x = torch.rand(3, 3, 64, 64) * 4 - 2
    with torch.inference_mode():
        logits, p, _ = (t.double().numpy() for t in export_onnx.exportable(net, meta)(x))
    expected = sigmoid(0.7 * (logits[:, 1] - logits[:, 0]) + 1.3)
    assert np.abs(p - expected).max() < 1e-6 and np.abs(p - sigmoid(logits[:, 1] - logits[:, 0])).max() > 0.05


@pytest.mark.slow
def test_an_onnx_file_keeps_platts_shift(tmp_path, capsys, one_torch_thread):
    """export_onnx.py on a model with a = 0.7, b = 1.3: the file's p_malignant is sigmoid(a z + b) of its own
    logits, computed here, and predict.py prints that P with the ONNX file. Wrong code caught: an export that
    drops b, or a predict.py that reads the ONNX logits without the calibration."""
    import onnxruntime as ort

    import export_onnx

    path = save_model(tmp_path / "m.pth", calibration=CALIBRATION)
    photo = lesion_photo(tmp_path / "photos" / "p.jpg", (80, 64), seed=5)
    export_onnx.main(
        ["--model", path, "--output", str(tmp_path / "m.onnx"), "--check-images", str(tmp_path / "photos")]
    )
    session, meta = model.load_onnx(str(tmp_path / "m.onnx"))
    x = photos.preprocess(photos.load_image(photo), model.meta_data_config(meta))[None]
    logits, p_file = ort.InferenceSession(str(tmp_path / "m.onnx")).run(["logits", "p_malignant"], {"image": x})
    expected = sigmoid(0.7 * (logits[0, 1] - logits[0, 0]) + 1.3)
    assert abs(p_file[0] - expected) < 1e-5
    capsys.readouterr()
    predict.main([photo, "--model", str(tmp_path / "m.onnx")])
    printed = float(capsys.readouterr().out.splitlines()[1].split("= ")[1].split()[0])
    assert printed == pytest.approx(expected, abs=1e-3)


# ---------------------------------------------------------------------------- the bootstrap interval
@pytest.mark.parametrize("level", [0.95, 0.8, 0.5])
def test_the_bootstrap_interval_has_the_level_asked_for(level):
    """The percentile interval of a mean over 400 photos is, by the central limit theorem, the mean +- z SE with
    z = the normal quantile of (1 + level) / 2 (computed here with scipy.stats.norm): its width within 10%.
    Wrong code caught: a level ignored, or percentiles at 100 (1 - level) and 100 level."""
    rng = np.random.default_rng(1)
    y, p = np.arange(400) % 2, rng.random(400)
    low, high = metrics.bootstrap_ci(y, p, 4000, seed=2, level=level, metric_fn=lambda y, p: p.mean(-1))["value"]
    half = norm.ppf((1 + level) / 2) * p.std() / math.sqrt(len(p))
    assert (high - low) / (2 * half) == pytest.approx(1, abs=0.1)
    assert (low + high) / 2 == pytest.approx(p.mean(), abs=0.2 * half)


def test_the_default_bootstrap_interval_is_95_percent():
    """Every interval the scripts print is a 95% one: bootstrap_ci's default level, by the same measure."""
    rng = np.random.default_rng(3)
    y, p = np.arange(400) % 2, rng.random(400)
    low, high = metrics.bootstrap_ci(y, p, 4000, seed=4, metric_fn=lambda y, p: p.mean(-1))["value"]
    assert (high - low) / (2 * 1.959964 * p.std() / math.sqrt(400)) == pytest.approx(1, abs=0.1)


def test_the_bootstrap_draws_every_photo_and_no_other():
    """Resamples of 3 photos (1 benign, 2 malignant): each kept resample holds the benign photo 0 (the minimum P
    is always 0.1), and the last photo is in 2/3 of them (so the maximum P ranges from 0.5 to 0.9); of 2 photos of
    different classes, every kept resample is both (the mean is 0.55 exactly). Wrong code caught: drawing from
    0..n-2 or 1..n-1 (an off-by-one in the range)."""

    def interval(y, p, fn):
        return metrics.bootstrap_ci(np.array(y), np.array(p), 2000, seed=0, metric_fn=fn)["value"]

    y, p = [0, 1, 1], [0.1, 0.5, 0.9]
    assert interval(y, p, lambda y, p: p.min(-1)) == (pytest.approx(0.1), pytest.approx(0.1))
    assert interval(y, p, lambda y, p: p.max(-1)) == (pytest.approx(0.5), pytest.approx(0.9))
    assert interval([0, 1], [0.2, 0.9], lambda y, p: p.mean(-1)) == (pytest.approx(0.55), pytest.approx(0.55))


def test_the_bootstrap_scores_n_resamples_of_n_photos():
    """With 50 photos of each class no resample lacks a class: metric_fn sees exactly n resamples, each of all
    the photos' count. Wrong code caught: one resample too few or too many, resamples of another size."""
    seen = []

    def record(y, p):
        seen.append(y.shape)
        return p.mean(-1)

    metrics.bootstrap_ci(np.arange(100) % 2, np.linspace(0, 1, 100), 777, seed=0, metric_fn=record)
    assert sum(rows for rows, _ in seen) == 777 and {photos_ for _, photos_ in seen} == {100}


# ---------------------------------------------------------------------------- the grouped split
@pytest.mark.parametrize("val, test", [(0.1, 0.2), (0.2, 0.1), (0.15, 0.05)])
def test_the_validation_and_the_test_share_each(val, test):
    """200 lesions of 2 photos (half of them malignant): the share of lesions in val is val, in test is test,
    each within one of StratifiedGroupKFold's 20 folds' rounding (1/40). Wrong code caught: the two fractions
    swapped, or a fold too many or too few in one of them (fold <= n_test)."""
    labels = np.repeat(np.arange(200) % 2, 2).astype(str)
    groups = np.repeat(np.arange(200), 2)
    split = splits.split_groups(labels, groups, val, test, seed=0)
    lesions = pd.Series(split[::2])
    assert all(len(set(split[groups == g])) == 1 for g in range(0, 200, 7))
    assert lesions.eq("val").mean() == pytest.approx(val, abs=0.025)
    assert lesions.eq("test").mean() == pytest.approx(test, abs=0.025)
    for s in ["val", "test"]:
        assert labels[split == s].tolist().count("1") == pytest.approx((split == s).sum() / 2, abs=2)


def test_the_split_follows_the_seed():
    """Same seed, same split; another seed, another split (with the same shares)."""
    labels = np.repeat(np.arange(100) % 2, 2).astype(str)
    groups = np.repeat(np.arange(100), 2)
    first = splits.split_groups(labels, groups, 0.2, 0.2, seed=0)
    assert np.array_equal(first, splits.split_groups(labels, groups, 0.2, 0.2, seed=0))
    other = splits.split_groups(labels, groups, 0.2, 0.2, seed=1)
    assert not np.array_equal(first, other) and sorted(first) == sorted(other)


# ---------------------------------------------------------------------------- the export's rows
def test_a_row_with_an_empty_image_type_is_left_out_and_counted(tmp_path):
    """metadata.csv with one row whose image_type is empty (pandas reads NaN; read_metadata makes it ''): that
    row is left out of the wanted type, and the summary says 'empty 1'. Wrong code caught: an empty type
    counted as the wanted one, or dropped without a word."""
    rows = [dict(isic_id=f"ISIC_{i:07d}", image_type="clinical: overview", diagnosis_1="Benign") for i in range(5)]
    rows[2]["image_type"] = ""
    folder = write_export(str(tmp_path / "export"), rows)
    df = isic.read_metadata([folder + "/metadata.csv"], ["isic_id", "image_type", "diagnosis_1"])
    assert df.image_type.tolist()[2] == ""
    kept, _, steps, _ = prepare_dataset.filter_rows(df, ["clinical: overview"])
    assert "ISIC_0000002" not in set(kept.isic_id) and len(kept) == 4
    (_, left, why), *_ = [step for step in steps if step[0].startswith("image_type")]
    assert left == 4 and why == "left out: empty 1"


def test_an_export_of_empty_image_types_only_suggests_no_empty_flag(capsys):
    """Every row's image_type empty: one line, and what it suggests is a flag the script accepts (an empty type
    cannot be asked for: --image-types '' is refused). Wrong code caught: suggesting --image-types empty."""
    df = pd.DataFrame(dict(isic_id=["ISIC_0000001", "ISIC_0000002"], image_type=["", ""], diagnosis_1=["Benign"] * 2))
    _, err = fails(capsys, "no row has image type", prepare_dataset.filter_rows, df, ["clinical: overview"])
    assert "--image-types empty" not in err


# ---------------------------------------------------------------------------- the balanced sample
def test_the_balanced_sample_follows_the_seed(tmp_path):
    """20 candidates per class, 3 taken: the same seed takes the same photos, another seed other photos (two
    seeds agreeing by chance: (1/1140)^2), and none of the samples is simply the first in file order. Wrong code
    caught: a sample that ignores SEED (an unseeded generator, or no shuffle)."""
    ids = [f"ISIC_{n:07d}" for n in range(40)]
    paths = [noise_image(tmp_path / "export" / f"{i}.jpg", n, size=(20, 16)) for n, i in enumerate(ids)]
    cands = pd.DataFrame(dict(isic_id=ids, path=paths, label=["benign", "malignant"] * 20))

    def sample(seed):
        out = tmp_path / f"out{seed}"
        out.mkdir(exist_ok=True)
        chosen, unreadable, duplicates = sampling.decode_balanced(cands, 3, seed, str(out), None, 1)
        assert not unreadable and not duplicates and chosen.label.value_counts().tolist() == [3, 3]
        return sorted(chosen.isic_id)

    first = sample(0)
    assert sample(0) == first
    assert sample(1) != first and sample(2) != first
    in_order = sorted(ids[:6])
    assert first != in_order and sample(1) != in_order


# ---------------------------------------------------------------------------- evaluate's mistakes
def test_a_photo_at_the_threshold_is_a_mistake_only_if_benign():
    """evaluate.py's most confident mistakes use predict.py's rule (malignant when P reaches the threshold): a benign
    photo with P exactly at the threshold is a mistake, a malignant one is not. Wrong code caught: p > threshold."""
    paths = ["benign_at.jpg", "malignant_at.jpg", "benign_below.jpg"]
    mistakes = evaluate.most_confident_mistakes(paths, np.array([0, 1, 0]), np.array([0.37, 0.37, 0.2]), 5, 0.37)
    assert [m["path"] for m in mistakes] == ["benign_at.jpg"]


def ece_by_hand(y, p, bins=15):
    """Expected calibration error, one bin at a time: photo-weighted |mean P - share malignant| (P = 1 in the last)."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    return sum(abs(p[which == k].mean() - y[which == k].mean()) * (which == k).sum() for k in set(which)) / len(p)


def test_evaluates_calibration_numbers_before_and_after_are_those_of_the_plain_and_the_calibrated_p():
    """evaluation.json's ECE, Brier score and log-loss 'before' are those of sigmoid(z), 'after' those of
    sigmoid(a z + b) with the stored calibration, each computed here. Wrong code caught: 'before' measured on the
    calibrated P (or 'after' on the plain one)."""
    from types import SimpleNamespace

    rng = np.random.default_rng(6)
    z = rng.normal(-1, 2, 300)
    y = (rng.random(300) < sigmoid(0.5 * z + 1)).astype(int)
    fitted = dict(method="platt", a=0.5, b=1.0)
    before, after = sigmoid(z), sigmoid(0.5 * z + 1)  # evaluate.main passes the plain and the calibrated P
    report = evaluation.calibration_report(y, before, after, fitted, SimpleNamespace(n_bootstrap=0, seed=0))
    for when, p in (("before", sigmoid(z)), ("after", sigmoid(0.5 * z + 1))):
        assert report[f"ece_{when}"] == pytest.approx(ece_by_hand(y, p))
        assert report[f"brier_{when}"] == pytest.approx(np.mean((p - y) ** 2))
        assert report[f"log_loss_{when}"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert report["ece_before"] > report["ece_after"] + 0.05
