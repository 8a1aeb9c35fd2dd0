import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

import evaluate
import model

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "evaluate.py")
THRESHOLD = 0.37

# hand-made predictions at threshold 0.5: predicted [0, 0, 1, 0, 1, 1] -> tn=2 fp=1 fn=1 tp=2
Y = np.array([0, 0, 0, 1, 1, 1])
P = np.array([0.1, 0.4, 0.7, 0.3, 0.8, 0.9])
AUC = 7 / 9  # positive beats negative in 7 of the 9 pairs: 0.3 > 0.1 only, 0.8 and 0.9 beat all three


def test_metrics_on_hand_made_predictions():
    m = model.binary_metrics(Y, P, 0.5)
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (2, 1, 1, 2)
    for key in ("accuracy", "balanced_accuracy", "precision", "sensitivity", "specificity", "f1"):
        assert m[key] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(AUC)
    assert evaluate.roc_auc(Y, P) == pytest.approx(AUC)
    assert evaluate.sensitivity(Y, P, 0.5) == pytest.approx(2 / 3)
    assert evaluate.specificity(Y, P, 0.5) == pytest.approx(2 / 3)
    assert evaluate.sensitivity(Y, P, 0.35) == pytest.approx(2 / 3)  # 0.3 still missed
    assert evaluate.specificity(Y, P, 0.35) == pytest.approx(1 / 3)  # 0.4 and 0.7 now false positives


def test_vectorised_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(50, 40))
    p = rng.random((50, 40)).round(1)  # many tied scores
    expected = [roc_auc_score(yi, pi) for yi, pi in zip(y, p)]
    np.testing.assert_allclose(evaluate.roc_auc(y, p), expected)


def noisy_predictions(n, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    return y, np.clip(0.35 + 0.3 * y + rng.normal(0, 0.25, n), 0, 1)


def test_bootstrap_ci_contains_estimate_narrows_with_data_and_is_fast():
    y, p = noisy_predictions(60)
    start = time.perf_counter()
    low, high = evaluate.bootstrap_ci(y, p, evaluate.roc_auc, 2000, 0)
    assert time.perf_counter() - start < 2
    assert low < roc_auc_score(y, p) < high and 0 <= low and high <= 1
    big_low, big_high = evaluate.bootstrap_ci(np.tile(y, 10), np.tile(p, 10), evaluate.roc_auc, 2000, 0)
    assert big_high - big_low < (high - low) / 2
    assert evaluate.bootstrap_ci(y, p, evaluate.roc_auc, 2000, 0) == (low, high)  # seeded
    sens = lambda yy, pp: evaluate.sensitivity(yy, pp, 0.5)
    s_low, s_high = evaluate.bootstrap_ci(y, p, sens, 2000, 0)
    assert s_low <= evaluate.sensitivity(y, p, 0.5) <= s_high
    assert np.isnan(evaluate.bootstrap_ci(np.zeros(10), p[:10], evaluate.roc_auc, 100, 0)).all()  # one class


def test_most_confident_mistakes_most_wrong_first():
    paths = [f"img{i}.jpg" for i in range(6)]
    mistakes = evaluate.most_confident_mistakes(paths, Y, P, 10, 0.5)
    assert sorted(m["path"] for m in mistakes) == ["img2.jpg", "img3.jpg"]
    assert dict(path="img3.jpg", true="malignant", p_malignant=0.3) in mistakes
    y = np.array([0, 0, 1, 1, 0])
    p = np.array([0.95, 0.6, 0.02, 0.45, 0.2])  # wrong by 0.95, 0.6, 0.98, 0.55; img4 is right
    mistakes = evaluate.most_confident_mistakes(paths, y, p, 3, 0.5)
    assert [m["path"] for m in mistakes] == ["img2.jpg", "img0.jpg", "img1.jpg"]
    assert evaluate.most_confident_mistakes(paths, y, p, 0, 0.5) == []


def test_compare_tta_same_predictions_no_difference():
    y, p = noisy_predictions(40)
    cmp = evaluate.compare_tta(y, p, p, 0.5, 200, 0)
    assert cmp["plain"] == cmp["tta"] and cmp["roc_auc_gain"] == 0
    assert cmp["verdict"] == "TTA makes no clear difference on this split"
    better = np.where(y == 1, np.maximum(p, 0.9), np.minimum(p, 0.1))
    assert evaluate.compare_tta(y, p, better, 0.5, 200, 0)["verdict"] == "TTA helps on this split"


def assert_png(path):
    assert os.path.getsize(path) > 0
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100
        img.verify()


def test_plots_are_valid_pngs(tmp_path):
    m = model.binary_metrics(Y, P, 0.5)
    evaluate.plot_confusion(m, tmp_path / "cm.png")
    evaluate.plot_roc(Y, P, m, (0.5, 1.0), tmp_path / "roc.png")
    assert_png(tmp_path / "cm.png")
    assert_png(tmp_path / "roc.png")


def make_dataset(root, n=6):
    rng = np.random.default_rng(0)
    for i, c in enumerate(model.CLASSES):
        os.makedirs(root / c)
        for j in range(n):
            pixels = rng.integers(0, 120 + 100 * i, size=(64, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{c}_{j}.jpg")


def run(tmp, *args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    net = model.build_model(pretrained=False)
    model.save_checkpoint(tmp / "model.pth", model.checkpoint_state(net, model.data_config(net, 64), threshold=THRESHOLD))
    make_dataset(tmp / "test")
    (tmp / "test" / "benign" / "notes.txt").write_text("not an image")
    (tmp / "test" / "malignant" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return tmp


@pytest.fixture(scope="module")
def plain_run(setup):
    result = run(setup, "--model", setup / "model.pth", "--data-dir", setup / "test", "--output-dir", setup / "out",
                 "--n-bootstrap", 200)
    return result, json.loads((setup / "out" / "evaluation.json").read_text()) if result.returncode == 0 else None


def test_end_to_end(setup, plain_run):
    result, report = plain_run
    assert result.returncode == 0, result.stderr
    assert f"threshold {THRESHOLD:.4f}" in result.stdout and "validation" in result.stdout
    for name in ("accuracy", "balanced accuracy", "sensitivity (recall)", "specificity", "F1", "ROC-AUC"):
        assert name in result.stdout
    assert report["threshold"] == pytest.approx(THRESHOLD) and report["tta"] is False
    assert report["n_images"] == {"benign": 6, "malignant": 6}
    m = report["metrics"]
    assert m["tn"] + m["fp"] == 6 and m["fn"] + m["tp"] == 6 and m["threshold"] == pytest.approx(THRESHOLD)
    assert set(report["ci95"]) == {"roc_auc", "sensitivity", "specificity"}
    assert "tta_comparison" not in report
    assert len(report["mistakes"]) == min(m["fp"] + m["fn"], 10)
    assert all(e["true"] == "benign" for e in report["mistakes"] if e["p_malignant"] >= THRESHOLD)
    assert_png(setup / "out" / "confusion_matrix.png")
    assert_png(setup / "out" / "roc_curve.png")


def test_unreadable_and_stray_files_counted(plain_run):
    result, report = plain_run
    assert report["n_non_image_files"] == 1 and "1 non-image file" in result.stderr and "notes.txt" in result.stderr
    assert report["n_unreadable"] == 1 and report["unreadable"][0].endswith("broken.jpg")
    assert "skipped 1 unreadable image" in result.stderr and "Traceback" not in result.stderr


def test_tta_adds_comparison(setup):
    result = run(setup, "--model", setup / "model.pth", "--data-dir", setup / "test", "--output-dir", setup / "tta",
                 "--tta", "--n-bootstrap", 100, "--num-workers", 0)
    assert result.returncode == 0, result.stderr
    report = json.loads((setup / "tta" / "evaluation.json").read_text())
    cmp = report["tta_comparison"]
    assert report["tta"] is True and {"plain", "tta", "roc_auc_gain", "verdict"} <= set(cmp)
    assert report["metrics"]["roc_auc"] == pytest.approx(cmp["tta"]["roc_auc"])
    assert "TTA vs plain" in result.stdout and cmp["verdict"] in result.stdout


def test_missing_class_folder_one_line_error(setup, tmp_path):
    os.makedirs(tmp_path / "data" / "benign")
    result = run(tmp_path, "--model", setup / "model.pth", "--data-dir", tmp_path / "data")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no malignant/ sub-folder" in lines[0]
    assert not (tmp_path / "evaluation.json").exists()


def test_data_folder_checks(tmp_path, capsys):
    data = tmp_path / "data"
    for c in model.CLASSES:
        os.makedirs(data / c)
    (data / "malignant" / "readme.txt").write_text("no images here")
    with pytest.raises(SystemExit) as exit_info:  # empty classes (a stray text file is not an image)
        evaluate.check_data_dir(data)
    assert exit_info.value.code == 1 and "no images in" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(data / "benign" / "a.png")
    Image.new("RGB", (8, 8)).save(data / "malignant" / "b.JPG")
    assert evaluate.check_data_dir(data) == [str(data / "malignant" / "readme.txt")]
    os.makedirs(data / "unknown")
    with pytest.raises(SystemExit):
        evaluate.check_data_dir(data)
    assert "unexpected sub-folder(s) unknown/" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.check_data_dir(tmp_path / "nowhere")
    assert "not found" in capsys.readouterr().err
