"""evaluate.py: every metric with its interval, the pictures, the most confident mistakes, TTA, the at-chance
verdict, counted skips, and one line (before any scoring) for what cannot work."""

import csv
import hashlib
import json
import os
import pathlib
import shutil
import types

import numpy as np
import pytest
from PIL import Image

import evaluate
import export_onnx
import model
import predict
from conftest import (
    ROOT,
    assert_one_error,
    beta_binomial_range,
    direct_familiarity_distance,
    export_rows,
    fingerprint,
    front_matter,
    grey_photo,
    lesion_photo,
    main_fails,
    recorded,
    run,
    save_model,
    write_export,
)
from skinlesion import card, files, model_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")
THRESHOLD = 0.37
METRICS = {"accuracy", "balanced_accuracy", "precision", "sensitivity", "specificity", "f1", "roc_auc"}


def test_most_confident_mistakes_most_wrong_first():
    paths = [f"img{i}.jpg" for i in range(6)]
    y, p = np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.4, 0.7, 0.3, 0.8, 0.9])
    mistakes = evaluate.most_confident_mistakes(paths, y, p, 10, 0.5)
    assert sorted(m["path"] for m in mistakes) == ["img2.jpg", "img3.jpg"]
    assert dict(path="img3.jpg", true="malignant", p_malignant=0.3) in mistakes
    y, p = np.array([0, 0, 1, 1, 0]), np.array([0.95, 0.6, 0.02, 0.45, 0.2])  # wrong by 0.95, 0.6, 0.98, 0.55
    assert [m["path"] for m in evaluate.most_confident_mistakes(paths, y, p, 3, 0.5)] == [
        "img2.jpg",
        "img0.jpg",
        "img1.jpg",
    ]
    assert evaluate.most_confident_mistakes(paths, y, p, 0, 0.5) == []


def test_compare_tta_tells_help_from_no_difference(capsys):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    p = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.25, 40), 0, 1)
    same = evaluate.compare_tta(y, p, p, 0.5, 200, 0)
    assert same["plain"] == same["tta"] and same["roc_auc_gain"] == 0
    assert same["verdict"] == "TTA makes no clear difference to the ROC-AUC on this split"
    assert "threshold_note" not in same
    better = np.where(y == 1, np.maximum(p, 0.9), np.minimum(p, 0.1))
    assert evaluate.compare_tta(y, p, better, 0.5, 200, 0)["verdict"] == "TTA helps the ROC-AUC on this split"
    # the same ranking, every P raised: the ROC-AUC cannot tell, the threshold chosen without TTA can
    raised = evaluate.compare_tta(y, p, np.clip(p + 0.3, 0, 1), 0.5, 200, 0)
    assert raised["verdict"] == "TTA makes no clear difference to the ROC-AUC on this split"
    plain_spec = np.mean(p[y == 0] < 0.5)
    tta_spec = np.mean(np.clip(p + 0.3, 0, 1)[y == 0] < 0.5)
    assert f"specificity {plain_spec:.3f} -> {tta_spec:.3f}" in raised["threshold_note"] and tta_spec < plain_spec
    assert "TTA vs plain on the same images" in capsys.readouterr().out


def class_photos(root, n):
    """root/<class>/<class>_<j>.jpg: n lesion photos per class (80 x 64), the malignant ones large and dark."""
    for k, c in enumerate(model.CLASSES):
        for j in range(n):
            lesion_photo(root / c / f"{c}_{j}.jpg", (80, 64), [k, j], malignant=bool(k))


def evaluate_into(model_path, data_dir, out_dir, n_bootstrap, *extra):
    """evaluate.main in this process: model_file on data_dir, the report into out_dir, no loader workers."""
    argv = ["--model", model_path, "--data-dir", data_dir, "--output-dir", out_dir, "--n-bootstrap", n_bootstrap]
    evaluate.main(list(map(str, [*argv, "--num-workers", 0, *extra])))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 64 px model whose answers vary, a test folder with a stray and a broken file, and evaluate.py's run."""
    tmp = tmp_path_factory.mktemp("evaluate")
    save_model(tmp / "model.pth", threshold=THRESHOLD, val_metrics={"roc_auc": 0.9})
    class_photos(tmp / "test", 6)
    (tmp / "test" / "benign" / "notes.txt").write_text("not an image")
    (tmp / "test" / "malignant" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    result = run(
        "evaluate.py",
        "--model",
        tmp / "model.pth",
        "--data-dir",
        tmp / "test",
        "--output-dir",
        tmp / "out",
        "--n-bootstrap",
        300,
        cwd=tmp,
    )
    report = json.loads((tmp / "out" / "evaluation.json").read_text()) if result.returncode == 0 else None
    return tmp, result, report


def assert_png(path):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100
        img.verify()


@pytest.mark.slow
def test_every_metric_with_its_interval_and_the_pictures(setup):
    tmp, result, report = setup
    assert result.returncode == 0, result.stderr
    assert f"threshold {THRESHOLD:.4f}" in result.stdout and "validation" in result.stdout
    for name in ("accuracy", "balanced accuracy", "precision", "sensitivity (recall)", "specificity", "F1", "ROC-AUC"):
        line = next(line for line in result.stdout.splitlines() if line.startswith(name + " "))
        assert line.count("[") == 1, line  # every metric has its interval
    assert report["threshold"] == pytest.approx(THRESHOLD) and report["tta"] is False
    assert report["n_images"] == {"benign": 6, "malignant": 6}  # the broken photo left out
    m = report["metrics"]
    assert m["tn"] + m["fp"] == 6 and m["fn"] + m["tp"] == 6
    assert set(report["ci95"]) == METRICS and all(low <= m[k] <= high for k, (low, high) in report["ci95"].items())
    assert report["at_chance"] == (report["ci95"]["roc_auc"][0] <= 0.5)
    assert len(report["mistakes"]) == min(m["fp"] + m["fn"], 10)
    for name in ("confusion_matrix.png", "roc_curve.png") + (("mistakes.png",) if report["mistakes"] else ()):
        assert_png(tmp / "out" / name)


@pytest.mark.slow
def test_unreadable_and_stray_files_are_counted(setup):
    _, result, report = setup
    assert report["n_non_image_files"] == 1 and "1 file(s)" in result.stderr and "notes.txt" in result.stderr
    assert report["n_unreadable"] == 1 and report["unreadable"][0].endswith("broken.jpg")
    assert "skipped 1 unreadable image" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_tta_adds_a_comparison(setup, tmp_path, capsys):
    tmp, _, _ = setup
    evaluate_into(tmp / "model.pth", tmp / "test", tmp_path, 100, "--tta")
    report = json.loads((tmp_path / "evaluation.json").read_text())
    cmp = report["tta_comparison"]
    assert report["tta"] is True and {"plain", "tta", "roc_auc_gain", "verdict"} <= set(cmp)
    assert report["metrics"]["roc_auc"] == pytest.approx(cmp["tta"]["roc_auc"])
    assert "TTA vs plain" in capsys.readouterr().out


@pytest.mark.slow
def test_a_model_at_chance_is_called_so(setup, tmp_path, capsys):
    """The same photos in both class folders: no model can tell them apart on them."""
    tmp, _, _ = setup
    for c in model.CLASSES:
        for j in range(8):
            lesion_photo(tmp_path / "twins" / c / f"{j}.jpg", (80, 64), j)
    evaluate_into(tmp / "model.pth", tmp_path / "twins", tmp_path / "out", 300)
    assert "warning: on these photos the model cannot be told from chance" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "evaluation_twins.json").read_text())["at_chance"] is True  # not the test's


@pytest.mark.slow
def test_what_cannot_work_is_said_before_any_scoring(setup, tmp_path, readonly_folder, monkeypatch, capsys):
    tmp, _, _ = setup
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a file").write_text("")
    common = ["--model", str(tmp / "model.pth"), "--data-dir", str(tmp / "test")]
    main_fails(
        evaluate.main, [*common, "--output-dir", "a file"], capsys, "--output-dir a file is a file; pass a folder"
    )
    main_fails(evaluate.main, [*common, "--output-dir", readonly_folder], capsys, f"cannot write in {readonly_folder}")
    main_fails(evaluate.main, [*common, "--batch-size", 0], capsys, "--batch-size 0: use 1 to 100000")
    main_fails(evaluate.main, [*common, "--n-bootstrap", -1], capsys, "--n-bootstrap -1")
    os.makedirs(tmp_path / "data" / "benign")
    main_fails(
        evaluate.main,
        ["--model", str(tmp / "model.pth"), "--data-dir", "data"],
        capsys,
        "data has no malignant/; it must hold exactly one folder per class",
    )
    assert sorted(os.listdir(tmp_path)) == ["a file", "data", "readonly"]  # nothing written


@pytest.mark.slow
def test_an_empty_split_keeps_the_previous_report(setup, tmp_path, monkeypatch, capsys):
    tmp, _, _ = setup
    for c in model.CLASSES:
        os.makedirs(tmp_path / "val" / c)
    recorded(tmp_path / "evaluation.json", "evaluation", json.dumps({"written_by": files.TAG, "previous": True}))
    before = fingerprint(tmp_path)
    monkeypatch.chdir(tmp_path)
    main_fails(
        evaluate.main,
        ["--model", str(tmp / "model.pth"), "--data-dir", "val"],
        capsys,
        "val: no images in benign/ and malignant/",
    )
    assert fingerprint(tmp_path) == before


@pytest.mark.slow
def test_a_full_disk_while_writing_the_report_keeps_the_previous_one(setup, tmp_path):
    tmp, _, _ = setup
    (tmp_path / "confusion_matrix.png").write_bytes(b"previous picture, " + files.TAG.encode())
    recorded(tmp_path / "confusion_matrix.png", "picture")
    before = fingerprint(tmp_path)
    r = run(
        "evaluate.py",
        "--model",
        tmp / "model.pth",
        "--data-dir",
        tmp / "test",
        "--n-bootstrap",
        50,
        "--num-workers",
        0,
        cwd=tmp_path,
        file_size_limit=20_000,
    )  # the JSON fits, the pictures do not
    assert_one_error(r.returncode, r.stderr, "confusion_matrix.png (File too large)")
    assert fingerprint(tmp_path)["confusion_matrix.png"] == before["confusion_matrix.png"]
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


@pytest.mark.slow
def test_calibration_operating_point_and_the_card_are_reported(setup, tmp_path, capsys):
    """evaluation.json: ECE, Brier and log-loss before and after the stored calibration with intervals, the test
    sensitivity and specificity at the stored threshold against its target; calibration.png; and the test results
    in the model card beside the model, equal to evaluation.json's."""
    tmp, _, _ = setup
    path = shutil.copyfile(tmp / "model.pth", tmp_path / "model.pth")
    evaluate_into(path, tmp / "test", tmp_path / "out", 300)
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    cal = report["calibration"]
    for key in ("ece", "brier", "log_loss"):
        for when in ("before", "after"):
            low, high = cal[f"{key}_{when}_ci95"]
            assert low <= cal[f"{key}_{when}"] <= high, (key, when)
    assert_png(tmp_path / "out" / "calibration.png")
    shown = f"test split ({tmp / 'test'}), n = 12: 6 malignant"  # which photos, how many: 6 + 6, one unreadable out
    for picture in ("calibration.png", "roc_curve.png", "confusion_matrix.png", "mistakes.png"):
        if (tmp_path / "out" / picture).exists() or picture != "mistakes.png":
            with Image.open(tmp_path / "out" / picture) as img:
                assert img.text["Title"] == shown, picture
    op = report["operating_point"]
    assert op["test_sensitivity"] == report["metrics"]["sensitivity"] and len(op["test_sensitivity_ci95"]) == 2
    text = (tmp_path / "model.md").read_text(encoding="utf-8")
    header = front_matter(text)
    test = next(r for r in header["model-index"][0]["results"] if r["dataset"]["split"] == "test")
    values = {m["type"]: m["value"] for m in test["metrics"]}
    for key in ("roc_auc", "sensitivity", "specificity"):
        assert values[key] == round(report["metrics"][key], 4), key
        assert f"{report['metrics'][key]:.3f}" in text.split("**Test**")[1]
    assert "calibration (none): ECE" in out
    sha256 = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()  # which model file the results are of
    assert report["model_sha256"] == sha256 and f"- Model file: model.pth, SHA-256 {sha256} (compare" in text


def test_a_calibration_that_worsens_the_test_ece_is_said():
    """P after the calibration is further from the share malignant than before it: ECE by hand, and a warning."""
    y = np.repeat([0, 1], 50)
    before = np.where(y == 1, 0.8, 0.2)  # ECE by hand: each bin 0.2 off
    after = np.where(y == 1, 0.6, 0.4)  # 0.4 off
    args = types.SimpleNamespace(n_bootstrap=0, seed=0)
    report = evaluate.calibration_report(y, before, after, dict(method="temperature"), args)
    assert report["ece_before"] == pytest.approx(0.2) and report["ece_after"] == pytest.approx(0.4)
    assert "made P(malignant) less well calibrated on these photos (ECE 0.200 before, 0.400 after)" in report["warning"]
    assert "warning" not in evaluate.calibration_report(y, after, before, dict(method="temperature"), args)


@pytest.mark.slow
def test_another_data_set_adds_an_external_validation_and_keeps_the_test_section(setup, tmp_path, capsys):
    """evaluate.py on the model's test split, then on another clinic's photos: the card keeps its Test section and
    model-index entry (the numbers of the first run), adds 'External validation: <name>' with its own, and no
    longer says 'No external validation'; evaluating the test split again keeps the external section."""
    tmp, _, _ = setup
    path = shutil.copyfile(tmp / "model.pth", tmp_path / "model.pth")
    class_photos(tmp_path / "other_clinic", 4)
    evaluate_into(path, tmp / "test", tmp_path / "out", 200)
    test_report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    evaluate_into(path, tmp_path / "other_clinic", tmp_path / "out", 200)
    assert "(External validation: other_clinic)" in capsys.readouterr().out
    external_report = json.loads((tmp_path / "out" / "evaluation_other_clinic.json").read_text())
    assert test_report["external_validation"] is None and external_report["external_validation"] == "other_clinic"
    for again in (False, True):
        text = (tmp_path / "model.md").read_text(encoding="utf-8")
        results = front_matter(text)["model-index"][0]["results"]
        by_split = {r["dataset"]["split"]: r for r in results}
        assert set(by_split) == {"validation", "test", "external"}
        assert by_split["external"]["dataset"]["name"] == "External validation: other_clinic"
        for split, report in (("test", test_report), ("external", external_report)):
            values = {m["type"]: m["value"] for m in by_split[split]["metrics"]}
            assert values["roc_auc"] == round(report["metrics"]["roc_auc"], 4), (split, again)
        test_part = text.split("**Test** (")[1].split("**External validation: other_clinic** (")
        assert len(test_part) == 2 and f"{test_report['metrics']['accuracy']:.3f}" in test_part[0]
        assert f"{external_report['metrics']['accuracy']:.3f}" in test_part[1]
        assert "No external validation" not in text and "External validation on other_clinic" in text
        evaluate_into(path, tmp / "test", tmp_path / "out", 200)  # the test split again: the external one stays
    test_report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    capsys.readouterr()
    predict.main([str(tmp_path / "other_clinic" / "benign" / "benign_0.jpg"), "--model", str(path)])
    m, ci = test_report["metrics"], test_report["ci95"]
    sens, spec = (f"{m[k]:.0%} [{100 * ci[k][0]:.0f}-{ci[k][1]:.0%}]" for k in ("sensitivity", "specificity"))
    assert (  # predict.py shows the test figures of this model, from its card, saying what the brackets are
        f"Tested: on the test photos, at the same threshold, it caught {sens} of the malignant, cleared {spec} of "
        f"the benign, ROC-AUC {m['roc_auc']:.2f} [{ci['roc_auc'][0]:.2f}-{ci['roc_auc'][1]:.2f}] (brackets: 95% "
        "intervals)."
    ) in capsys.readouterr().out.splitlines()
    shutil.copyfile(tmp / "model.pth", tmp_path / "model.pth")  # a fresh copy, then one byte more:
    with open(path, "ab") as f:
        f.write(b"\0")  # another model file (its bytes differ): the earlier results are not its own
    evaluate_into(path, tmp / "test", tmp_path / "out", 200)
    assert "External validation: other_clinic" not in (tmp_path / "model.md").read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["n-bootstrap too many", "output not ours", "output inside the data", "none"])
def test_evaluate_refuses_before_any_work(setup, tmp_path, monkeypatch, capsys, case):
    tmp, _, _ = setup
    monkeypatch.chdir(tmp_path)
    (tmp_path / "roc_curve.png").write_bytes(b"a user's own picture")
    before = fingerprint(tmp_path)
    common = ["--model", str(tmp / "model.pth"), "--data-dir", str(tmp / "test")]
    argv, expected = {
        "n-bootstrap too many": (
            [*common, "--n-bootstrap", 100_001],
            "--n-bootstrap 100001: use 0 to 100000 (or set N_BOOTSTRAP at the top of evaluate.py)",
        ),
        "output not ours": (common, "--output-dir ./roc_curve.png exists and was not written by this project"),
        "output inside the data": (
            [*common, "--output-dir", str(tmp / "test" / "benign")],
            f"use a folder outside {tmp / 'test'} (an input)",
        ),
        "none": ([*common, "--n-bootstrap", "none"], "argument --n-bootstrap: none: this flag needs a value"),
    }[case]
    main_fails(evaluate.main, argv, capsys, expected)
    assert fingerprint(tmp_path) == before


@pytest.mark.parametrize("threshold, target, outside", [(1.0, 0.99, True), (0.0, 1.0, False)])
def test_the_target_outside_the_test_interval_is_said(tmp_path, capsys, threshold, target, outside):
    """An operating point for a target sensitivity, on 4 malignant test photos: threshold 1 catches none (the
    test sensitivity and its interval are 0, far from 0.99: a warning), threshold 0 catches all (1, with the
    target 1 inside its interval: no warning). Both outcomes, each for sure."""
    op = dict(target_sensitivity=target, threshold=threshold, sensitivity=target, sensitivity_ci95=[0.9, 1.0])
    op.update(specificity=threshold, specificity_ci95=[threshold] * 2)  # all benign cleared, or none: as on test
    path = save_model(tmp_path / "model.pth", threshold=threshold, val_metrics={"roc_auc": 0.9}, operating_point=op)
    class_photos(tmp_path / "test", 4)
    evaluate_into(path, tmp_path / "test", tmp_path / "out", 50)
    err = capsys.readouterr().err
    found = json.loads((tmp_path / "out" / "evaluation.json").read_text())["operating_point"]
    assert found["test_sensitivity"] == (0.0 if outside else 1.0)
    assert found["test_sensitivity_ci95"] == ([0.0, 0.0] if outside else [1.0, 1.0])
    assert found["target_outside_interval"] is outside
    said = f"warning: the target sensitivity {target:.2f} lies outside the test sensitivity's 95% interval"
    assert (said in err) is outside and ("lies outside" in err) is outside


@pytest.mark.parametrize("target, outside", [(0.6, False), (0.8, False), (0.59, True), (0.81, True), (0.0, False)])
def test_the_target_outside_the_interval_counts_its_ends_as_inside(target, outside):
    """operating_report against an interval 0.60-0.80: its ends are inside, just past them outside; target 0
    (a plain 0.5 threshold) is never a warning."""
    scores, ci = dict(sensitivity=0.7, specificity=0.6), dict(sensitivity=(0.6, 0.8), specificity=(0.5, 0.7))
    meta = dict(operating_point=dict(target_sensitivity=target, threshold=0.4))
    found = evaluate.operating_report(np.array([0, 1]), np.array([0.2, 0.7]), meta, scores, ci)
    assert found["target_outside_interval"] is outside and ("warning" in found) is outside


def test_without_intervals_the_target_is_neither_inside_nor_outside(tmp_path, capsys):
    """--n-bootstrap 0 (no test intervals) warned that the operating point 'did not hold here (nan-nan)'. The same
    photos with intervals: the warning is said (test_the_target_outside_the_test_interval_is_said). The intervals
    validation stated are the model's own, and a test figure outside them is still said."""
    op = dict(target_sensitivity=0.99, threshold=1.0, sensitivity=0.99, sensitivity_ci95=[0.9, 1.0])
    op.update(specificity=0.3, specificity_ci95=[0.2, 0.4])
    path = save_model(tmp_path / "model.pth", threshold=1.0, val_metrics={"roc_auc": 0.9}, operating_point=op)
    class_photos(tmp_path / "test", 4)
    evaluate_into(path, tmp_path / "test", tmp_path / "out", 0)
    err = capsys.readouterr().err
    found = json.loads((tmp_path / "out" / "evaluation.json").read_text())["operating_point"]
    assert found["test_sensitivity"] == 0.0 and found["target_outside_interval"] is None
    assert "nan-nan" not in err and "nan%" not in err and "the target sensitivity" not in err and "warning" not in found
    # what validation stated needs no bootstrap here: the test figures outside those intervals are still said
    assert "the test sensitivity 0% lies outside the 95% interval validation stated for it" in err
    assert "the test specificity 50% lies outside the 95% interval validation stated for it" in err


def evaluated(model_path, data_dir, folder):
    """evaluate.py on data_dir into folder, in a fresh process: the finished run."""
    return run(
        "evaluate.py",
        "--model",
        model_path,
        "--data-dir",
        data_dir,
        "--output-dir",
        folder,
        "--num-workers",
        0,
        "--n-bootstrap",
        300,
        cwd=folder,
        threads=2,
    )


@pytest.mark.slow
def test_a_type_model_learns_the_demo_types_and_is_reported_by_type(trained_types_model, tmp_path):
    """The demo export by lesion type: the types' balanced accuracy on the test split clearly above chance (0.25),
    a one-vs-rest ROC-AUC per type, their confusion picture, and the benign/malignant report as for two classes."""
    path, types_dir, out = trained_types_model
    assert "types" in [line for line in out.splitlines() if line.startswith("epoch ")][-1]
    r = evaluated(path, os.path.join(types_dir, "test"), tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "evaluation.json").read_text())
    types = report["types"]
    assert types["classes"] == ["nevus", "seborrheic_keratosis", "basal_cell_carcinoma", "melanoma_invasive"]
    assert types["chance"] == 0.25 and types["balanced_accuracy"] >= 0.5, types
    assert all(auc > 0.7 for auc in types["one_vs_rest_auc"].values()), types
    assert np.array(types["confusion"]).sum() == sum(report["n_images"].values())
    assert report["metrics"]["roc_auc"] > 0.85 and set(report["metrics"]) >= {"sensitivity", "specificity"}
    assert_png(tmp_path / "types_confusion.png")
    low, high = types["balanced_accuracy_ci95"]
    said = f"lesion types: balanced accuracy {types['balanced_accuracy']:.3f} [{low:.3f}, {high:.3f}] (chance 0.250)"
    assert said in r.stdout


@pytest.mark.slow
def test_the_demo_runs_card_holds_the_test_results_by_subgroup(trained_model, demo_dataset, tmp_path):
    """The demo run's card after evaluate.py: its test numbers equal evaluation.json's, the subgroups are the
    demo's metadata columns (sex, age band, body site, skin type), and the licences and attribution of the demo
    export came through prepare_dataset.py into it."""
    path = shutil.copyfile(trained_model[0], tmp_path / "skin_model.pth")
    r = evaluated(path, os.path.join(demo_dataset, "test"), tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "evaluation.json").read_text())
    text = (tmp_path / "skin_model.md").read_text(encoding="utf-8")
    header = front_matter(text)
    assert header["license"] == "cc-by-nc-4.0"  # the demo's licences include CC-BY-NC: the most restrictive wins
    test = next(r for r in header["model-index"][0]["results"] if r["dataset"]["split"] == "test")
    for metric in test["metrics"]:
        if metric["type"] in report["metrics"]:
            assert metric["value"] == round(report["metrics"][metric["type"]], 4), metric
    assert set(report["subgroups"]) == {"sex", "age band", "body site", "skin type"}
    for factor, groups in report["subgroups"].items():
        assert f"Test ROC-AUC by {factor}" in text
        for group in groups.values():
            assert group["text"] in text and (group["text"] == "too few photos to report") == ("roc_auc" not in group)
    assert "SYNTHETIC" in text and "CC-BY-NC" in text


@pytest.mark.slow
def test_a_loop_of_links_in_the_data_folder_neither_hangs_nor_counts_twice(setup, tmp_path):
    tmp, _, _ = setup
    data = shutil.copytree(tmp / "test", tmp_path / "test")
    os.symlink(".", data / "benign" / "again")
    os.remove(data / "malignant" / "broken.jpg")
    r = run(
        "evaluate.py",
        "--model",
        tmp / "model.pth",
        "--data-dir",
        data,
        "--output-dir",
        tmp_path / "out",
        "--n-bootstrap",
        50,
        "--num-workers",
        0,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["n_images"] == {"benign": 6, "malignant": 6}


def test_the_unfamiliar_test_photos_are_counted_in_the_report_and_the_card(familiar_model, tmp_path):
    """The model's own test photos plus two flat grey ones among the benign: evaluate.py counts the photos beyond
    the familiarity limit (as computed here), says so, and the card says it."""
    checkpoint, data = familiar_model
    shutil.copytree(os.path.join(data, "test"), tmp_path / "test")
    greys = [grey_photo(tmp_path / "test" / "benign" / f"grey{i}.png", (60 + i, 50)) for i in range(2)]
    model_path = shutil.copy(checkpoint, tmp_path / "skin_model.pth")
    r = run("evaluate.py", "--model", model_path, "--data-dir", tmp_path / "test", "--n-bootstrap", 50, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    name = f"{tmp_path.name}_test"  # not the model's dataset (no manifest beside): an external validation's name
    with open(tmp_path / f"evaluation_{name}.json") as f:
        report = json.load(f)
    found = report["familiarity"]
    paths = [os.path.join(root, n) for root, _, names in os.walk(tmp_path / "test") for n in names]
    distances, stored = direct_familiarity_distance(model_path, paths)
    flagged = int((distances > stored["limit"]).sum())
    assert found["n_unfamiliar"] == flagged and found["n_photos"] == len(paths) and flagged >= len(greys)
    assert f"unfamiliar: {flagged} of {len(paths)} photos" in r.stdout
    listed = {photo["path"]: photo for photo in report["unfamiliar_photos"]}  # each flagged photo, with its label
    assert set(listed) == {path for path, d in zip(paths, distances) if d > stored["limit"]} >= set(greys)
    for path in listed:
        true = os.path.basename(os.path.dirname(path))
        assert listed[path]["true"] == true and f"  {true:<12} distance " in r.stdout and path in r.stdout
    within = f"{stored['val_within']:.0%} of the {stored['n_val']} validation photos lie within"  # as training says
    assert within in r.stdout and "photos within)" not in r.stdout
    with open(tmp_path / "skin_model.md", encoding="utf-8") as f:
        text = f.read()
    assert f"Unfamiliar photos: {flagged} of {len(paths)}" in text and text.count(within) == 2


@pytest.mark.parametrize(
    "sensitivity, specificity, ece, said",
    [
        (0.90, 0.33, 0.10, ["the test specificity 33% lies outside the 95% interval validation stated for it "
                            "(63% [45-80%]) and beyond what 30 benign photos can show there ({}): it did not hold "
                            "here"]),  # issue 29's run
        (0.90, 0.45, 0.10, []),  # the ends of an interval are inside it
        (0.82, 0.81, 0.10, ["test sensitivity 82%", "test specificity 81%"]),
        (0.90, 0.60, 0.30, ["the validation ECE 0.050 lies outside the 95% interval of the test ECE (0.300, "
                            "0.200-0.400): the calibration did not hold here"]),  # 0.30 > the limit 0.25
        (0.90, 0.60, 0.24, ["the validation ECE 0.050 lies outside the 95% interval of the test ECE (0.240, "
                            "0.140-0.340), though a calibrated P scores up to 0.250 on these 60 photos (95 times in "
                            "100): more photos will tell"]),
        (0.90, 0.60, 0.26, ["the test ECE 0.260 is more than a calibrated P scores on these 60 photos 95 times in "
                            "100 (0.250): the calibration did not hold here"]),  # validation's 0.05 inside 0.01-0.51
    ],
)  # fmt: skip
def test_every_test_figure_outside_what_validation_stated_is_warned_about(sensitivity, specificity, ece, said):
    """Not only the target sensitivity: the test sensitivity and specificity against validation's intervals, and
    the ECE (validation's against the test ECE's interval, the test's against what a calibrated P scores on these
    photos). Each says whether it lies beyond what 30 photos of its class can show as well (the beta-binomial
    range, here from a hand count: issue 29's 63% of 30 benign validation photos)."""
    op = dict(target_sensitivity=0.9, threshold=0.4, sensitivity=0.93, sensitivity_ci95=[0.83, 1.0])
    op.update(specificity=0.63, specificity_ci95=[0.45, 0.80], n_malignant=29, n_benign=30)
    meta = dict(operating_point=op, calibration=dict(method="platt", val_ece_after=0.05))
    half_width = 0.1 if ece != 0.26 else 0.25
    cal = dict(ece_after=ece, ece_after_ci95=[ece - half_width, ece + half_width], ece_after_if_calibrated=0.25)
    y = np.repeat([0, 1], 30)
    found = evaluate.figures_outside(y, dict(sensitivity=sensitivity, specificity=specificity), cal, meta)
    low, high = beta_binomial_range(0.63 * 30, 30, 30)
    said = [text.replace("{}", f"{100 * low:.0f}-{high:.0%}") for text in said]
    assert len(found) == len(said) and all(part in text for part, text in zip(said, found)), found
    no_interval = dict(cal, ece_after_ci95=[float("nan")] * 2, ece_after=0.1)  # --n-bootstrap 0: nothing to say
    assert evaluate.figures_outside(y, dict(sensitivity=0.9, specificity=0.6), no_interval, meta) == []
    older = dict(meta, operating_point={k: v for k, v in op.items() if not k.startswith("n_")})  # no counts stored
    found = evaluate.figures_outside(y, dict(sensitivity=0.9, specificity=0.33), no_interval, older)
    assert found == ["the test specificity 33% lies outside the 95% interval validation stated for it (63% [45-80%]): "
                     "it did not hold here"]  # fmt: skip


def test_a_model_with_folds_is_said_to_have_stated_its_figures_out_of_fold():
    """A model whose figures come from its folds: the warnings name the folds and the out-of-fold ECE, never
    validation, which it had none of; a test figure outside the folds' narrow interval but within what 30 test
    photos can show is said to need more photos (docs/measurements.md, seed 1); the operating report names the
    out-of-fold predictions."""
    op = dict(target_sensitivity=0.9, threshold=0.4, sensitivity=0.91, sensitivity_ci95=[0.86, 0.95])
    op.update(specificity=0.34, specificity_ci95=[0.27, 0.41], n_malignant=170, n_benign=170)
    meta = dict(operating_point=op, calibration=dict(method="platt", val_ece_after=0.05))
    meta["folds"] = dict(k=5, photos=340, deployed="ensemble", epochs=[7, 8, 6, 9, 7])
    cal = dict(ece_after=0.3, ece_after_ci95=[0.2, 0.4], ece_after_if_calibrated=0.2)
    y = np.repeat([0, 1], 30)
    found = evaluate.figures_outside(y, dict(sensitivity=0.97, specificity=0.43), cal, meta)
    assert found[0].startswith("the test sensitivity 97% lies outside the 95% interval the folds stated for it (")
    assert found[1].startswith("the test specificity 43% lies outside the 95% interval the folds stated for it (")
    low, high = beta_binomial_range(0.34 * 170, 170, 30)
    assert found[1].endswith(f", though 30 benign photos can show {100 * low:.0f}-{high:.0%} there (95 times in 100): "
                             "more photos will tell")  # fmt: skip
    assert found[2].startswith("the out-of-fold ECE 0.050 lies outside the 95% interval of the test ECE (0.300")
    assert len(found) == 3 and not any("validation" in text for text in found)
    y, p = np.repeat([0, 1], 10), np.linspace(0.0, 0.39, 20)  # every photo below the threshold: sensitivity 0
    scores = dict(sensitivity=0.0, specificity=1.0)
    report = evaluate.operating_report(y, p, meta, scores, dict(sensitivity=(0.0, 0.2), specificity=(0.8, 1.0)))
    assert report["warning"].endswith("the operating point chosen on the out-of-fold predictions did not hold here")


def external_rows():
    """An export from another clinic: 9 benign and 3 malignant photos (its own prevalence, not balanced), 4 of them
    dermoscopic, plus one row without a definite side and one without a photo."""
    rows = []
    for i in range(14):
        side = "Malignant" if i % 4 == 3 else "Benign"
        kind = "dermoscopic" if i < 4 else "clinical: overview"
        rows.append(dict(isic_id=f"ISIC_{i:07d}", attribution="Clinic B", image_type=kind, diagnosis_1=side))
    rows[12]["diagnosis_1"] = "Indeterminate"
    rows[13]["isic_id"] = "ISIC_9999999"  # listed, never downloaded
    return rows


@pytest.mark.slow
def test_an_external_validation_writes_its_own_files_and_the_test_runs_stay_byte_identical(setup, tmp_path, capsys):
    """evaluate.py --external (or another DATA_DIR) wrote evaluation.json and the pictures over the test run's:
    the last run replaced them, and export_onnx.py no longer found the test results there. An external run's
    files carry its name; every file the test run wrote stays as it was, and export_onnx.py reads the test's."""
    tmp, _, _ = setup
    path = str(shutil.copyfile(tmp / "model.pth", tmp_path / "model.pth"))
    class_photos(tmp_path / "other clinic", 4)
    evaluate_into(path, tmp / "test", tmp_path, 200)
    test_report = json.loads((tmp_path / "evaluation.json").read_text())
    written = {name: digest for name, digest in fingerprint(tmp_path, marks=False).items() if name != "model.md"}
    assert {"evaluation.json", "roc_curve.png", "calibration.png", "confusion_matrix.png"} <= set(written)
    for external in (["--external", write_export(tmp_path / "clinic b", export_rows(12))], []):
        data = tmp / "test" if external else tmp_path / "other clinic"
        evaluate_into(path, data, tmp_path, 200, *external)
        after = fingerprint(tmp_path, marks=False)
        assert {name: after[name] for name in written} == written  # byte-identical, the test's card section too
    for name in ("clinic_b", "other_clinic"):
        for file in ("evaluation_{}.json", "roc_curve_{}.png", "calibration_{}.png", "confusion_matrix_{}.png"):
            assert file.format(name) in after
        assert json.loads((tmp_path / f"evaluation_{name}.json").read_text())["external_validation"] is not None
    found = export_onnx.evaluation_of(path, files.file_sha256(path))
    assert found == test_report and test_report["external_validation"] is None
    out = capsys.readouterr().out
    assert f"wrote {tmp_path}/evaluation_other_clinic.json, {tmp_path}/confusion_matrix_other_clinic.png" in out


@pytest.mark.slow
def test_without_intervals_every_file_is_strict_json_and_every_reader_reads_null(setup, tmp_path, capsys):
    """--n-bootstrap 0 computes no interval: evaluation.json held null, but the card kept NaN (not JSON) and
    showed 'nan-nan', and export_onnx.py found no test results in the file (a null interval raised inside), so
    the page showed none. Every file is strict JSON, the card says 'not computed', and the test figures reach
    export_onnx.py's card summary (what the page shows) and predict.py without brackets."""
    tmp, _, _ = setup
    path = str(shutil.copyfile(tmp / "model.pth", tmp_path / "model.pth"))
    evaluate_into(path, tmp / "test", tmp_path, 0)

    def strict(text):
        return json.loads(text, parse_constant=lambda constant: pytest.fail(f"{constant} in a JSON file"))

    report = strict((tmp_path / "evaluation.json").read_text())
    assert report["ci95"]["roc_auc"] == [None, None]
    text = (tmp_path / "model.md").read_text(encoding="utf-8")
    assert strict(text.split(card.EMBEDDED)[1].rsplit(" -->", 1)[0])["test"]["ci95"]["sensitivity"] == [None, None]
    assert "nan-nan" not in text and "NaN" not in text
    assert f"| sensitivity | {report['metrics']['sensitivity']:.3f} | not computed |" in text
    m = report["metrics"]
    expected = (
        f"on the test photos, at the same threshold, it caught {m['sensitivity']:.0%} of the malignant, cleared "
        f"{m['specificity']:.0%} of the benign, ROC-AUC {m['roc_auc']:.2f}"
    )
    meta = model_file.read_checkpoint(path)["meta"]
    props = export_onnx.onnx_metadata(meta, path, files.file_sha256(path), {})
    assert strict(props["card_summary"])["tested"] == expected  # the page's 'Tested' line
    capsys.readouterr()
    predict.main([str(tmp / "test" / "benign" / "benign_0.jpg"), "--model", path])
    assert f"Tested: {expected}." in capsys.readouterr().out.splitlines()


@pytest.mark.slow
def test_an_isic_export_is_validated_externally_in_one_command(setup, tmp_path, capsys):
    """evaluate.py --external EXPORT --external-name NAME: every photo of the export as downloaded with a definite
    side, at its natural prevalence; the rows left out counted; the card's 'External validation: NAME' section
    with the photos' image types and malignant share; the figures checked against P from predict.py's CSV;
    predict.py shows them beside the test figures; the pictures say which photos they show."""
    tmp, _, _ = setup
    path = str(shutil.copyfile(tmp / "model.pth", tmp_path / "model.pth"))
    export = write_export(tmp_path / "clinic_b", external_rows())
    for missing in ("ISIC_0000005", "ISIC_9999999"):  # their rows stay: photos missing from the download
        os.remove(os.path.join(export, f"{missing}.jpg"))
    evaluate_into(path, tmp / "test", tmp_path / "out", 200)  # the test split first
    capsys.readouterr()
    evaluate_into(path, tmp / "test", tmp_path / "out", 200, "--external", export, "--external-name", "Clinic B")
    out, err = capsys.readouterr()
    report = json.loads((tmp_path / "out" / "evaluation_Clinic_B.json").read_text())
    assert report["external_validation"] == "Clinic B" and report["data_dir"] == export
    assert report["n_images"] == {"benign": 8, "malignant": 3}  # 14 rows: undecided, not downloaded, missing out
    assert f"left out 1 row(s) of {export}: no definite benign/malignant side ('Indeterminate' 1)" in err
    assert f"left out 2 row(s) of {export}: missing (ISIC_0000005, ISIC_9999999)" in err
    assert report["photos"] == dict(n_photos=11, malignant_share=3 / 11,
                                    image_types={"clinical: overview": 7, "dermoscopic": 4})  # fmt: skip
    predict.main([export, "--model", path, "--csv", str(tmp_path / "p.csv")])
    capsys.readouterr()
    with open(tmp_path / "p.csv", newline="") as f:
        p = {os.path.basename(row["file"]): float(row["p_malignant"]) for row in csv.DictReader(f)}
    malignant = {f"ISIC_{i:07d}.jpg" for i in (3, 7, 11)}
    caught = np.mean([p[name] >= THRESHOLD for name in malignant])
    cleared = np.mean([p[name] < THRESHOLD for name in p if name not in malignant])
    assert report["metrics"]["sensitivity"] == pytest.approx(caught)
    assert report["metrics"]["specificity"] == pytest.approx(cleared)
    text = (tmp_path / "model.md").read_text(encoding="utf-8")
    section = text.split("**External validation: Clinic B** (")[1]
    assert (
        "Photos: 11, of image type clinical: overview 7, dermoscopic 4 (training photos: unknown); 27% malignant"
        in section
    )
    assert "**Test** (" in text  # the test section stays
    predict.main([os.path.join(export, "ISIC_0000001.jpg"), "--model", path])
    lines = capsys.readouterr().out.splitlines()
    tested = [line for line in lines if line.startswith(("Tested: ", "External validation: "))]
    assert len(tested) == 2 and tested[0].startswith("Tested: on the test photos, at the same threshold")
    sens = f"{caught:.0%} [{100 * report['ci95']['sensitivity'][0]:.0f}-{report['ci95']['sensitivity'][1]:.0%}]"
    assert tested[1].startswith(
        f"External validation: on Clinic B (11 photos, 27% malignant), at the same threshold, it caught {sens} of the "
        "malignant"
    )
    with Image.open(tmp_path / "out" / "calibration_Clinic_B.png") as img:
        assert img.text["Title"] == f"external validation: Clinic B ({export}), n = 11: 3 malignant"
    with Image.open(tmp_path / "out" / "calibration.png") as img:  # the test run's picture stays
        assert img.text["Title"].startswith(f"test split ({tmp / 'test'}), n = ")


REAL_CLINICAL = next(
    (p for p in ("/work/shared/real_clinical_sample", os.path.join(ROOT, "..", "shared", "real_clinical_sample"))
     if os.path.isdir(p)),
    None,
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(REAL_CLINICAL is None, reason="no /work/shared or ../shared/real_clinical_sample (dev setup only)")
def test_real_clinical_photos_as_an_external_validation(trained_model, tmp_path):
    """170 real MED-NODE photos as an export (metadata.csv, photos) validate the suite's demo model externally in
    one command: every photo, at its own prevalence (counted here from its metadata.csv), the card's section with
    its image types and malignant share beside the training photos' (the suite has no dermoscopic session model:
    the demo's is trained on drawings), the export untouched."""
    with open(os.path.join(REAL_CLINICAL, "metadata.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    sides = [row["diagnosis_1"].lower() for row in rows]
    counts = {side: sides.count(side) for side in model.CLASSES}
    before = fingerprint(REAL_CLINICAL)
    checkpoint = shutil.copy(trained_model[0], tmp_path / "skin_model.pth")
    args = ["--model", checkpoint, "--external", REAL_CLINICAL, "--external-name", "MED-NODE", "--n-bootstrap", 200]
    r = run("evaluate.py", *args, "--num-workers", 0, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "evaluation_MED-NODE.json").read_text())
    assert report["n_images"] == counts and report["external_validation"] == "MED-NODE"
    assert report["photos"]["malignant_share"] == pytest.approx(counts["malignant"] / len(rows))
    text = (tmp_path / "skin_model.md").read_text(encoding="utf-8")
    section = text.split("**External validation: MED-NODE** (")[1]
    prior = model_file.read_checkpoint(checkpoint)["meta"]["prior_malignant"]
    share = f"{counts['malignant'] / len(rows):.0%} malignant (training photos: {prior:.0%})"
    assert f"Photos: {len(rows)}, of image type clinical: overview {len(rows)} (training photos: " in section
    assert share in section and fingerprint(REAL_CLINICAL) == before
