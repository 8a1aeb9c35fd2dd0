"""The numbers a user reads, each against a value this file computes on its own (issue 23 section 4): the stored
threshold lives on the calibrated P that predict.py compares with it; an ONNX file keeps Platt's shift b; the
bootstrap interval's level and its resampling range; the validation and the test share of the grouped split, each;
an empty image_type; the balanced sample follows SEED. Each test names the wrong code it catches.
The metrics equal scikit-learn's (row by row, and for lesion types), bootstrap intervals
(seeded, narrowing with data, bounded memory for 100000 resamples), the threshold for a target sensitivity and
the stable one, the operating point in numbers and in words, and its warnings.
Calibration: calibrating a class-weighted model lowers its log-loss, keeps its ranking and brings
its ECE on new photos of the same prevalence to at most 0.05; temperature or Platt scaling as the cross-validated
log-loss says; a split the model separates perfectly keeps a finite scale; the measures of calibration row by row
as one by one, equal to scikit-learn's, and the reliability diagram's bins."""

import math
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from scipy.stats import norm
from sklearn import metrics as skm

import AItraining
import evaluate
import model
import predict
import prepare_dataset
from conftest import beta_binomial_range, calibration, fails, lesion_photo, noise_image, save_model, write_export
from skinlesion import card, isic, metrics, model_file, photos


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
    x = torch.from_numpy(photos.preprocess(photos.load_image(photo), model_file.meta_data_config(meta)))[None]
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
    x = torch.from_numpy(photos.preprocess(photos.load_image(photo), model_file.meta_data_config(meta)))[None]
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
    x = photos.preprocess(photos.load_image(photo), model_file.meta_data_config(meta))[None]
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
    split = isic.split_groups(labels, groups, val, test, seed=0)
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
    first = isic.split_groups(labels, groups, 0.2, 0.2, seed=0)
    assert np.array_equal(first, isic.split_groups(labels, groups, 0.2, 0.2, seed=0))
    other = isic.split_groups(labels, groups, 0.2, 0.2, seed=1)
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
        chosen, unreadable, duplicates = isic.decode_balanced(cands, 3, seed, str(out), None, 1)
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
    report = evaluate.calibration_report(y, before, after, fitted, SimpleNamespace(n_bootstrap=0, seed=0))
    for when, p in (("before", sigmoid(z)), ("after", sigmoid(0.5 * z + 1))):
        assert report[f"ece_{when}"] == pytest.approx(ece_by_hand(y, p))
        assert report[f"brier_{when}"] == pytest.approx(np.mean((p - y) ** 2))
        assert report[f"log_loss_{when}"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert report["ece_before"] > report["ece_after"] + 0.05
    assert report["ece_after_if_calibrated"] == metrics.calibrated_ece_limit(after, seed=0)  # of the calibrated P


@pytest.mark.parametrize(
    "value, n_stated, n_new",
    [(0.34, 170, 30), (0.91, 170, 30), (0.63, 30, 30), (0.5, 1, 60), (1.0, 40, 25), (0.0, 40, 25), (0.45, 2000, 7)],
)
def test_what_a_test_of_n_photos_can_show_is_the_beta_binomial_predictive_range(value, n_stated, n_new):
    """expected_share: the range of a share on n_new new photos, given value on n_stated, equals the hand-summed
    beta-binomial; wider than the new photos' own binomial range where the stated photos are few, and nearly it
    where they are many. Wrong code caught: the stated interval itself, the binomial alone, the prior left out."""
    from scipy.stats import binom

    expected = metrics.expected_share(value, n_stated, n_new)
    assert expected == pytest.approx(beta_binomial_range(value * n_stated, n_stated, n_new), abs=1e-12)
    alone = binom(n_new, value).ppf(0.025) / n_new, binom(n_new, value).ppf(0.975) / n_new
    assert expected[0] <= alone[0] and expected[1] >= alone[1]
    assert metrics.expected_share(value, 10**6, n_new) == pytest.approx(alone, abs=1.01 / n_new)
    assert metrics.expected_share(value, 0, n_new) is None and metrics.expected_share(value, n_stated, 0) is None


def test_the_folds_specificity_on_30_benign_test_photos():
    """The seed-1 ensemble of docs/measurements.md: 34% out of fold on 170 benign photos; its 95% interval
    (27-41%) misses a 43% on 30 test photos, which what 30 photos can show (5 to 16 of them) holds."""
    low, high = metrics.expected_share(0.34, 170, 30)
    assert (round(low * 30), round(high * 30)) == (5, 16)
    assert low < 0.27 and high >= 0.43


@pytest.mark.parametrize("photos", [1, 7, 60, 400])
def test_the_ece_limit_of_a_calibrated_p_is_its_95th_percentile(photos, monkeypatch):
    """calibrated_ece_limit: P = 0.5 everywhere puts every photo in one bin, where the ECE is |share malignant -
    0.5|, whose 95th percentile the binomial gives exactly; the limit from 2,000 draws lies within one photo of it.
    Drawn in chunks it is the same number (the draws are one stream). Wrong code caught: the mean instead of the
    95th percentile (far below), labels drawn from another P, a chunk drawn twice."""
    from scipy.stats import binom

    p = np.full(photos, 0.5)
    k = np.arange(photos + 1)
    gaps = np.abs(k / photos - 0.5)
    order = np.argsort(gaps)
    exact = gaps[order][np.argmax(np.cumsum(binom.pmf(k, photos, 0.5)[order]) >= 0.95)]
    limit = metrics.calibrated_ece_limit(p)
    assert abs(limit - exact) <= 1 / photos + 1e-12
    monkeypatch.setattr(metrics, "CHUNK", 3 * photos)
    assert metrics.calibrated_ece_limit(p) == limit


# ---------------------------------------------------------------------------- metrics
def scores(n_malignant, n_benign, seed, separation=1.8):
    """Synthetic validation scores: P(malignant) = expit(N(separation - 1, 1.2)) for malignant photos and
    expit(N(-1, 1.2)) for benign ones."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_malignant, int), np.zeros(n_benign, int)]
    return y, expit(rng.normal(0, 1.2, len(y)) + separation * y - 1)


# ---------------------------------------------------------------------------- benign/malignant metrics
def test_metrics_equal_scikit_learn_row_by_row():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (40, 30))
    p = rng.random((40, 30)).round(1)  # many tied scores
    rows = metrics.binary_metrics(y, p, 0.5)
    for i in range(len(y)):
        pred = p[i] >= 0.5
        expected = dict(
            accuracy=skm.accuracy_score(y[i], pred),
            balanced_accuracy=skm.balanced_accuracy_score(y[i], pred),
            precision=skm.precision_score(y[i], pred, zero_division=0),
            sensitivity=skm.recall_score(y[i], pred),
            specificity=skm.recall_score(1 - y[i], ~pred),
            f1=skm.f1_score(y[i], pred),
            roc_auc=skm.roc_auc_score(y[i], p[i]),
        )
        assert {k: rows[k][i] for k in expected} == pytest.approx(expected)
    m = metrics.binary_metrics([0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.6, 0.3, 0.8, 0.4, 0.9, 0.7])
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (3, 1, 1, 3) and m["roc_auc"] == pytest.approx(15 / 16)
    assert math.isnan(metrics.binary_metrics([1, 1], [0.2, 0.9])["roc_auc"])  # one class: no AUC


def test_bootstrap_intervals_contain_the_estimate_narrow_with_data_and_flag_chance():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    p = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.25, 60), 0, 1)
    ci = metrics.bootstrap_ci(y, p, 2000, 0, threshold=0.5)
    point = metrics.binary_metrics(y, p, 0.5)
    for key in ["accuracy", "balanced_accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc"]:
        assert ci[key][0] <= point[key] <= ci[key][1], key
    big = metrics.bootstrap_ci(np.tile(y, 10), np.tile(p, 10), 2000, 0, metric_fn=metrics.roc_auc)["value"]
    assert big[1] - big[0] < (ci["roc_auc"][1] - ci["roc_auc"][0]) / 2
    assert metrics.bootstrap_ci(y, p, 2000, 0, threshold=0.5) == ci  # seeded
    assert not metrics.at_chance(ci["roc_auc"])
    noise = rng.random(60)  # a model that knows nothing
    assert metrics.at_chance(metrics.bootstrap_ci(y, noise, 2000, 0, metric_fn=metrics.roc_auc)["value"])
    assert np.isnan(metrics.bootstrap_ci(np.zeros(10), p[:10], 100, 0)["roc_auc"]).all()  # one class only


def test_bootstrap_in_chunks_gives_the_numbers_of_one_draw(monkeypatch):
    y, p = scores(25, 70, seed=3)
    whole = metrics.bootstrap_ci(y, p, 3000, 7, threshold=0.4)
    auc = metrics.bootstrap_ci(y, p, 3000, 7, metric_fn=metrics.roc_auc)
    monkeypatch.setattr(metrics, "CHUNK", 95 * 7 + 50)  # 7 resamples per chunk, the last one shorter
    assert metrics.bootstrap_ci(y, p, 3000, 7, threshold=0.4) == whole
    assert metrics.bootstrap_ci(y, p, 3000, 7, metric_fn=metrics.roc_auc) == auc


@pytest.mark.slow  # seconds of CPU: left to make test
def test_bootstrap_memory_stays_bounded_for_100000_resamples():
    """evaluate.py allows --n-bootstrap up to 100000: drawn at once, 100000 resamples of 300 photos would take
    gigabytes (indices, labels, scores, ranks); in chunks the peak is a few chunks' worth."""
    y, p = scores(60, 240, seed=0)
    tracemalloc.start()
    try:
        ci = metrics.bootstrap_ci(y, p, 100_000, 0, threshold=0.3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150e6, f"peak {peak / 1e6:.0f} MB"
    point = metrics.binary_metrics(y, p, 0.3)
    assert all(ci[k][0] <= point[k] <= ci[k][1] for k in ("sensitivity", "specificity", "roc_auc"))


def test_chance_needs_the_interval_above_one_half():
    assert metrics.at_chance((0.5, 0.9)) and metrics.at_chance((0.3, 0.7)) and metrics.at_chance((np.nan, np.nan))
    assert not metrics.at_chance((0.51, 0.9))


def test_is_probability():
    assert metrics.is_probability([0, 0.5, 1, -0.1, 1.1, np.nan, np.inf]).tolist() == [1, 1, 1, 0, 0, 0, 0]


# ---------------------------------------------------------------------------- thresholds
def test_threshold_meets_target_sensitivity_on_the_data_it_was_chosen_on():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, 200), 0, 1)
    for target in [0.8, 0.9, 0.95, 1.0]:
        t = metrics.threshold_for_sensitivity(y, p, target)
        assert metrics.binary_metrics(y, p, t)["sensitivity"] >= target
        assert metrics.binary_metrics(y, p, t + 1e-9)["sensitivity"] < target or t >= p.max()  # the highest such
    assert metrics.threshold_for_sensitivity(y, p, 0) == 0.5


@pytest.mark.parametrize("n_malignant", [7, 30, 59, 60, 61, 120])
def test_stable_threshold_reaches_the_target_on_the_data(n_malignant):
    for seed in range(20):
        y, p = scores(n_malignant, 4 * n_malignant, seed)
        p = p.round(2) if seed % 2 else p  # tied scores too
        for target in (0.8, 0.9, 0.95, 1.0):
            t = metrics.stable_threshold(y, p, target)
            assert metrics.binary_metrics(y, p, t)["sensitivity"] >= target, (seed, target)
            assert t <= metrics.threshold_for_sensitivity(y, p, target)
    assert metrics.stable_threshold(y, p, 0) == 0.5
    assert metrics.stable_threshold(np.ones(5), p[:5], 0.9) == 0.5  # no benign photo: the plain threshold


@pytest.mark.slow  # seconds of CPU: left to make test
def test_stable_threshold_varies_less_from_split_to_split_than_the_raw_one():
    """Validation splits of 60 malignant and 240 benign photos drawn again and again from one population: the raw
    threshold (the P of one photo) scatters more around the population's threshold for 90% sensitivity, and
    catches less than 90% of the population's malignant photos more often than not. (Leaving one photo out
    moves any estimate of a quantile by about as much as the raw one moves at worst: one photo's share of the
    quantile's sampling noise; the median over bootstrap resamples of the k-th highest P, tried first, was
    that P exactly.)"""
    shift, spread = 1.8 - 1, 1.2  # scores(): the malignant photos' log-odds are N(0.8, 1.2)
    truth = expit(norm.ppf(0.1, shift, spread))
    raw, stable = [], []
    for seed in range(600):
        y, p = scores(60, 240, 1000 + seed)
        raw.append(metrics.threshold_for_sensitivity(y, p, 0.9))
        stable.append(metrics.stable_threshold(y, p, 0.9))
    raw, stable = np.array(raw), np.array(stable)
    assert not np.allclose(raw, stable)
    rmse = {name: np.sqrt(np.mean((t - truth) ** 2)) for name, t in (("raw", raw), ("stable", stable))}
    assert rmse["stable"] < 0.92 * rmse["raw"], rmse
    caught = {name: norm.sf(np.log(t / (1 - t)), shift, spread) for name, t in (("raw", raw), ("stable", stable))}
    assert abs(caught["stable"].mean() - 0.9) < 0.005 < abs(caught["raw"].mean() - 0.9)
    assert np.mean(caught["raw"] >= 0.9) < 0.45 < 0.5 < np.mean(caught["stable"] >= 0.9)
    for i in range(60, 300):  # a benign photo left out: the threshold stays where it is
        keep = np.arange(300) != i
        assert metrics.stable_threshold(y[keep], p[keep], 0.9) == stable[-1]


# ---------------------------------------------------------------------------- the operating point
def test_operating_point_holds_its_threshold_rates_and_intervals():
    y, p = scores(60, 240, seed=5)
    op = metrics.operating_point(y, p, 0.9)
    at = metrics.binary_metrics(y, p, op["threshold"])
    assert op["threshold"] == metrics.stable_threshold(y, p, 0.9)
    assert op["sensitivity"] == at["sensitivity"] >= 0.9 and op["specificity"] == at["specificity"]
    for key in ("sensitivity", "specificity"):
        low, high = op[key + "_ci95"]
        assert low <= op[key] <= high and high - low < 0.3
    assert (op["n_malignant"], op["n_benign"], op["target_sensitivity"]) == (60, 240, 0.9)
    assert metrics.operating_point(y, p, 0.9) == op  # seeded


def test_operating_point_in_words():
    op = dict(sensitivity=0.9, sensitivity_ci95=[0.81, 0.96], specificity=0.45, specificity_ci95=[0.39, 0.51])
    assert metrics.operating_point_text(op) == (
        "at this threshold the model caught 90% [81-96%] of the malignant validation photos and cleared 45% "
        "[39-51%] of the benign ones (brackets: 95% intervals)"
    )
    assert metrics.operating_point_text(op, "test photos").startswith("at this threshold the model caught 90%")
    assert metrics.percent_range(0.5, (0.0, 1.0)) == "50% [0-100%]"


@pytest.mark.parametrize(
    "sensitivity,specificity,expected",
    [
        (0.95, 0.1, "this threshold calls almost every photo malignant (it cleared only 10% of benign)"),
        (0.1, 0.95, "this threshold calls almost no photo malignant (it caught only 10% of malignant)"),
        (0.9, 0.2, None),
        (0.2, 0.9, None),
        (0.9, 0.6, None),
    ],
)
def test_operating_point_warning(sensitivity, specificity, expected):
    assert metrics.operating_point_warning(dict(sensitivity=sensitivity, specificity=specificity)) == expected


# ---------------------------------------------------------------------------- lesion types
def test_lesion_type_metrics_equal_scikit_learn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(0, 1, (300, 4)) + 1.5 * np.eye(4)[y]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    predicted = probabilities.argmax(1)
    assert metrics.balanced_accuracy(y, probabilities) == pytest.approx(skm.balanced_accuracy_score(y, predicted))
    expected = [skm.roc_auc_score(y == c, probabilities[:, c]) for c in range(4)]
    assert metrics.one_vs_rest_auc(y, probabilities) == pytest.approx(expected)
    assert metrics.confusion(y, probabilities).tolist() == skm.confusion_matrix(y, predicted, labels=range(4)).tolist()
    absent = y != 3  # a type without photos: its AUC is not a number, its row of the confusion zeros
    assert np.isnan(metrics.one_vs_rest_auc(y[absent], probabilities[absent])[3])
    assert metrics.confusion(y[absent], probabilities[absent])[3].tolist() == [0, 0, 0, 0]


@pytest.mark.slow  # seconds of CPU: left to make test
def test_the_stored_threshold_moves_little_when_one_validation_photo_is_left_out():
    """The issue's test: on validation splits of 60 malignant and 240 benign photos, leaving out one photo moves the
    stored threshold little: its largest move over every photo left out stays under 0.06 on the P scale, and is
    on average a third smaller than the raw threshold's (which jumps across the gap between two photos' P)."""
    largest_stable, largest_raw = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        y = np.r_[np.ones(60), np.zeros(240)].astype(int)
        p = np.r_[rng.beta(3, 2, 60), rng.beta(2, 5, 240)]
        stable, raw = metrics.stable_threshold(y, p, 0.9), metrics.threshold_for_sensitivity(y, p, 0.9)
        moved_stable, moved_raw = [], []
        for i in range(60):  # a benign photo left out moves neither: both read only the malignant photos' P
            kept = np.arange(len(y)) != i
            moved_stable.append(abs(metrics.stable_threshold(y[kept], p[kept], 0.9) - stable))
            moved_raw.append(abs(metrics.threshold_for_sensitivity(y[kept], p[kept], 0.9) - raw))
        largest_stable.append(max(moved_stable))
        largest_raw.append(max(moved_raw))
    assert max(largest_stable) < 0.06 < max(largest_raw)
    assert np.mean(largest_stable) < 0.75 * np.mean(largest_raw)


CASES = [(0.7, 0.5, 0.05), (0.2, 0.5, 0.5), (0.9, 0.3, 0.01), (0.05, 0.2, 0.6)]


@pytest.mark.parametrize("p, prior, prevalence", CASES)
def test_reweighting_p_for_another_prevalence_is_bayes_rule(p, prior, prevalence):
    """By hand: P = prior * L1 / (prior * L1 + (1 - prior) * L0) gives the likelihood ratio L1 / L0; at another
    prevalence, P' = prevalence * LR / (prevalence * LR + 1 - prevalence)."""
    likelihood_ratio = (p / prior) / ((1 - p) / (1 - prior))
    by_hand = prevalence * likelihood_ratio / (prevalence * likelihood_ratio + 1 - prevalence)
    assert float(metrics.reweighted(p, prior, prevalence)) == pytest.approx(by_hand, rel=1e-12)
    assert float(metrics.reweighted(p, prior, prior)) == pytest.approx(p, rel=1e-12)  # the same setting: P itself
    assert float(metrics.reweighted(1.0, prior, prevalence)) == 1.0 and float(metrics.reweighted(0.0, prior, 0.1)) == 0


def test_ppv_and_npv_by_hand():
    """1000 photos, 5% malignant, sensitivity 0.9, specificity 0.6: 45 caught, 5 missed, 570 cleared, 380 false
    alarms; PPV = 45 / 425, NPV = 570 / 575."""
    ppv, npv = metrics.predictive_values(0.9, 0.6, 0.05)
    assert ppv == pytest.approx(45 / 425) and npv == pytest.approx(570 / 575)
    ppv, npv = metrics.predictive_values(1.0, 0.0, 0.3)  # everyone called malignant
    assert ppv == pytest.approx(0.3) and np.isnan(npv)


def test_a_weak_model_is_called_so():
    op = dict(specificity=0.27)
    assert "cleared only 27% of benign validation photos" in metrics.weak_model_warning(op, [0.75, 0.9])
    assert "as low as 0.65" in metrics.weak_model_warning(dict(specificity=0.5), [0.65, 0.9])
    assert metrics.weak_model_warning(dict(specificity=0.5), [0.7, 0.9]) is None


def test_type_results_with_intervals_equal_scikit_learns():
    """Balanced accuracy and each type's sensitivity (recall) of the most probable type, as scikit-learn computes
    them, each inside its 95% bootstrap interval; a type the model never gets right has sensitivity 0."""
    from sklearn.metrics import balanced_accuracy_score, recall_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    probabilities = rng.random((300, 3)) + 0.8 * np.eye(3)[y] * (y != 2)[:, None]  # type 2: never the most probable
    found = metrics.types_with_intervals(y, probabilities, ["a", "b", "c"], n=500, seed=0)
    predicted = probabilities.argmax(1)
    assert found["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, predicted))
    recalls = recall_score(y, predicted, average=None)
    for c, name in enumerate("abc"):
        t = found["types"][name]
        assert t["sensitivity"] == pytest.approx(recalls[c]) and t["photos"] == int((y == c).sum())
        assert t["sensitivity_ci95"][0] <= t["sensitivity"] <= t["sensitivity_ci95"][1]
    low, high = found["balanced_accuracy_ci95"]
    assert low < found["balanced_accuracy"] < high and high - low < 0.2 and found["chance"] == pytest.approx(1 / 3)
    text = metrics.types_text(found, {"a": "Nevus"})
    assert text.startswith(f"lesion types: balanced accuracy {found['balanced_accuracy']:.2f} [{low:.2f}-{high:.2f}]")
    assert f"Nevus {recalls[0]:.2f} [" in text and "(95% intervals in brackets)" in text


# ---------------------------------------------------------------------------- calibration
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
    fitted = metrics.fit_calibration(y, z)
    p = metrics.calibrated(z, fitted)
    assert fitted["val_log_loss_after"] < fitted["val_log_loss_before"] - 0.05
    assert fitted["val_log_loss_after"] == pytest.approx(metrics.log_loss(y, p))
    assert fitted["val_ece_after"] < fitted["val_ece_before"]
    assert fitted["a"] > 0 and metrics.roc_auc(y, p) == metrics.roc_auc(y, z)  # the same ranking
    y_test, z_test = logits(3000, 0.2, 100 + seed)  # new photos, the validation's prevalence
    assert metrics.ece(y_test, metrics.calibrated(z_test, None)) > 0.1
    assert metrics.ece(y_test, metrics.calibrated(z_test, fitted)) <= 0.05
    assert metrics.roc_auc(y_test, metrics.calibrated(z_test, fitted)) == metrics.roc_auc(y_test, z_test)


@pytest.mark.parametrize("seed", range(4))
def test_platt_scaling_where_the_prior_is_shifted(seed):
    """Class weights shift the log-odds by log(1/4) for 20% malignant: only Platt's b can take that back."""
    y, z = logits(400, 0.2, seed, scale=1.5)
    fitted = metrics.fit_calibration(y, z)
    assert fitted["method"] == "platt"
    assert fitted["cv_log_loss"]["platt"] < fitted["cv_log_loss"]["temperature"]
    assert fitted["a"] == pytest.approx(1 / 1.5, rel=0.25) and fitted["b"] == pytest.approx(np.log(0.25), abs=0.4)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prevalence", [0.5, 0.2])
def test_temperature_scaling_where_only_the_temperature_is_wrong(seed, prevalence):
    """An overconfident model (log-odds three times too large) whose prior is right: the extra parameter of
    Platt scaling would only fit noise, and temperature scaling is kept."""
    y, z = logits(300, prevalence, seed, scale=3.0, weighted=False)
    fitted = metrics.fit_calibration(y, z)
    assert fitted["method"] == "temperature" and fitted["b"] == 0.0
    assert fitted["a"] == pytest.approx(1 / 3, rel=0.4)  # shrinks the log-odds about threefold
    assert fitted["val_log_loss_after"] < fitted["val_log_loss_before"]


def test_a_perfectly_separated_split_keeps_a_finite_scale():
    y = np.repeat([0, 1], 20)
    z = np.r_[np.linspace(-3, -0.5, 20), np.linspace(0.5, 3, 20)]  # separated, and underconfident: scaled up
    fitted = metrics.fit_calibration(y, z)
    assert fitted["method"] == "temperature" and fitted["a"] > 1
    assert 0 < fitted["a"] < 5 and abs(fitted["b"]) < 5  # Platt's smoothed targets: no infinite slope
    p = metrics.calibrated(z, fitted)
    assert p.min() > 0 and p.max() < 1 - 1e-3 and metrics.roc_auc(y, p) == 1.0
    assert np.isfinite([fitted[k] for k in ("val_log_loss_after", "val_ece_after")]).all()


def test_no_calibration_without_both_classes():
    assert metrics.fit_calibration(np.ones(10), np.linspace(-1, 1, 10)) is None
    z = np.array([-30.0, -1.0, 0.0, 2.0, 40.0])
    np.testing.assert_allclose(metrics.calibrated(z, None), expit(z))
    fitted = metrics.fit_calibration(np.array([0, 0, 0, 1, 1, 1]), np.array([-2.0, -1, 0.5, -0.5, 1, 2]))
    assert fitted["method"] != "platt" and fitted["cv_log_loss"]["platt"] is not None
    fitted = metrics.fit_calibration(np.array([0, 0, 0, 0, 1]), np.array([-2.0, -1, 0.5, -0.5, 1]))
    cv = fitted["cv_log_loss"]
    assert fitted["method"] == "temperature" and (cv["temperature"], cv["platt"]) == (None, None)


# ---------------------------------------------------------------------------- measures of calibration
def ece_bin_by_bin(y, p, bins=15):
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
    for measure in (metrics.ece, metrics.brier, metrics.log_loss):
        rows = measure(y, p)
        assert rows.shape == (50,)
        np.testing.assert_allclose(rows, [measure(y[i], p[i]) for i in range(50)], rtol=1e-12)
    for i in range(50):
        assert metrics.ece(y[i], p[i]) == pytest.approx(ece_bin_by_bin(y[i], p[i]))
        assert metrics.brier(y[i], p[i]) == pytest.approx(skm.brier_score_loss(y[i], p[i]))
        q = np.clip(p[i], metrics.EPS, 1 - metrics.EPS)
        assert metrics.log_loss(y[i], p[i]) == pytest.approx(skm.log_loss(y[i], q, labels=[0, 1]))
    assert metrics.ece([0, 1, 1, 0], [0.0, 1.0, 1.0, 0.0]) == 0.0


def test_ece_of_a_bootstrap_stays_small_in_memory():
    """evaluate.py bootstraps the ECE: per resample one number, not a (photos x bins) table."""
    y, z = logits(300, 0.2, 0)
    tracemalloc.start()
    try:
        low, high = metrics.bootstrap_ci(y, expit(z), 20_000, 0, metric_fn=metrics.ece)["value"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150e6, f"peak {peak / 1e6:.0f} MB"
    assert low <= metrics.ece(y, expit(z)) <= high


def test_reliability_bins():
    rng = np.random.default_rng(5)
    p = np.r_[rng.random(500), 1.0, 0.0]
    y = (rng.random(502) < p).astype(int)
    bins = metrics.reliability(y, p)
    assert sum(n for _, _, n in bins) == 502 and len(bins) == metrics.BINS
    for k, (mean_p, share, n) in enumerate(bins):
        inside = metrics.bin_index(p) == k
        assert k / 15 <= mean_p <= (k + 1) / 15 and n == inside.sum()
        assert mean_p == pytest.approx(p[inside].mean()) and share == pytest.approx(y[inside].mean())
    ece = sum(n * abs(mean_p - share) for mean_p, share, n in bins) / 502
    assert metrics.ece(y, p) == pytest.approx(ece)
    assert [n for _, _, n in metrics.reliability([0, 1, 1], [0.05, 0.95, 1.0])] == [1, 2]  # empty bins left out


def test_no_calibration_where_it_does_not_lower_the_held_out_log_loss():
    """A model that already separates the split with confident, right log-odds: any scaling fitted to Platt's
    smoothed targets predicts held-out photos worse than the model itself, so none is kept (a = 1, b = 0), and
    the card can say so. The model's own log-loss is computed here by hand."""
    y = np.repeat([0, 1], 20)
    z = np.r_[np.linspace(-9, -1, 20), np.linspace(1, 9, 20)]
    fitted = metrics.fit_calibration(y, z)
    own = np.mean(np.where(y == 1, -np.log(expit(z)), -np.log(1 - expit(z))))
    assert fitted["cv_log_loss"]["none"] == pytest.approx(own, abs=1e-6)
    assert own < min(fitted["cv_log_loss"]["temperature"], fitted["cv_log_loss"]["platt"])
    assert fitted["method"] == "none" and (fitted["a"], fitted["b"]) == (1.0, 0.0)
    np.testing.assert_allclose(metrics.calibrated(z, fitted), expit(z))
    assert fitted["val_log_loss_after"] == fitted["val_log_loss_before"]
    for seed in range(1, 4):  # well-calibrated log-odds: the fitted scalings predict held-out photos no better
        y, z = logits(300, 0.5, seed, weighted=False)
        fitted = metrics.fit_calibration(y, z)
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
    fitted = metrics.fit_calibration(y, logits, mask)
    a, b = fitted["a"], fitted["b"]
    e = np.exp(a * logits + b * mask)
    by_hand = e[:, mask].sum(1) / e.sum(1)
    log_odds = np.log(e[:, mask].sum(1)) - np.log(e[:, ~mask].sum(1))
    assert np.mean(-np.log(np.where(y == 1, by_hand, 1 - by_hand))) == pytest.approx(fitted["val_log_loss_after"])
    assert metrics.calibrated(log_odds - b, dict(a=1.0, b=b)) == pytest.approx(by_hand)
    assert fitted["applies_to"] == "logits" and fitted["method"] != "none"
    two = rng.normal(0, 2, (300, 2))
    y2 = (rng.random(300) < expit(0.5 * (two[:, 1] - two[:, 0]))).astype(int)
    on_logits, on_z = (
        metrics.fit_calibration(y2, two, np.array([False, True])),
        metrics.fit_calibration(y2, two[:, 1] - two[:, 0]),
    )
    assert (on_logits["a"], on_logits["b"]) == pytest.approx((on_z["a"], on_z["b"]), rel=1e-6, abs=1e-9)


def test_an_interval_not_computed_is_none_and_its_text_says_so():
    """evaluate.py --n-bootstrap 0 stores each interval as [null, null] (NaN in files of earlier versions): each
    reader treats it as unknown, never formats it ('nan-nan', or a TypeError on None)."""
    for unknown in ([None, None], [math.nan, math.nan], [0.2, None], None, [0.2], "0.2-0.3", [True, False]):
        assert metrics.known_interval(unknown) is None, unknown
        assert metrics.interval_text(unknown) == "not computed"
    assert metrics.known_interval([0.25, 0.5]) == (0.25, 0.5) and metrics.interval_text((0.25, 0.5), 2) == "0.25-0.50"
    found = dict(balanced_accuracy=0.6, balanced_accuracy_ci95=[None, None], chance=1 / 3,
                 types={"nevus": dict(sensitivity=0.8, sensitivity_ci95=[None, None])})  # fmt: skip
    assert metrics.types_text(found) == (
        "lesion types: balanced accuracy 0.60 (chance 0.33); each type's sensitivity: nevus 0.80"
    )
    found["types"]["nevus"]["sensitivity_ci95"] = [0.7, 0.88]  # the nearest: one interval known, bracketed
    assert metrics.types_text(found) == (
        "lesion types: balanced accuracy 0.60 (chance 0.33); each type's sensitivity: nevus 0.80 [0.70-0.88] (95% "
        "intervals in brackets)"
    )
    entry = card.result_entry("m", "test", dict(roc_auc=0.9), None, "ece_after", dict(roc_auc=[None, None]))
    assert entry["metrics"] == [dict(type="roc_auc", name="ROC-AUC (test)", value=0.9)]
