"""The page's smaller model (skinlesion/quantise.py, export_onnx.py's int8 twin, serve_web.py's choice): the
comparison's numbers against values computed here, the tolerance's edges, and the whole path on the suite's
trained model: the twin is written beside the export, ~3x smaller, with its comparison in its metadata; predict.py
takes it; serve_web.py runs it only where it was made from that very export and kept within tolerance."""

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import export_onnx
import model
import predict
import serve_web
from conftest import changed_output, fingerprint, set_self_check
from skinlesion import answer, files, metrics, model_file, photos, quantise


def test_the_twin_is_named_beside_its_export():
    assert quantise.quantised_path("a/skin_model.onnx") == "a/skin_model.int8.onnx"


def test_comparison_counts_changed_labels_and_those_outside_the_band():
    p_full = np.array([0.10, 0.49, 0.51, 0.90, 0.30, 0.70])
    p_int8 = np.array([0.12, 0.51, 0.49, 0.40, 0.31, 0.69])  # 0.49 -> 0.51 and 0.51 -> 0.49 in the band; 0.90 not
    y = np.array([0, 0, 1, 1, 0, 1])
    result = quantise.comparison(p_full, p_int8, y, threshold=0.5, band=0.02)
    assert result["photos"] == 6 and result["max_p_difference"] == pytest.approx(0.5)
    assert result["label_changes"] == 3 and result["label_changes_outside_band"] == 1
    assert result["roc_auc_full"] == pytest.approx(metrics.roc_auc(y, p_full))
    assert result["roc_auc_int8"] == pytest.approx(7 / 9)  # pairs (malignant, benign) ranked right, by hand
    assert not result["within_tolerance"]


def test_the_borderline_band_is_measured_from_the_full_models_p_and_its_edges_are_the_pages():
    """A changed label counts as outside the band where the full model's P lies band or further from the threshold
    (the page calls a P borderline only within less than band): exactly at band it is outside, just inside it is
    not; a P that the twin moves into the band still counts, one it moves out of the band does not. Threshold 0.5,
    band 0.25: exact in binary."""
    threshold, band = 0.5, 0.25
    p_full = np.array([0.75, np.nextafter(0.75, 0), 0.25, np.nextafter(0.25, 1), 0.8, 0.55, 0.9])
    p_int8 = np.array([0.45, 0.45, 0.55, 0.55, 0.45, 0.2, 0.95])
    expected = 0  # by hand: label changed, and the full model's P not borderline (|P - threshold| < band)
    for full, int8 in zip(p_full, p_int8):
        changed = (full >= threshold) != (int8 >= threshold)
        borderline = abs(full - threshold) < band
        expected += bool(changed and not borderline)
    assert expected == 3  # 0.75, 0.25 and 0.8; not the two just inside, nor 0.55 -> 0.2; 0.9 keeps its label
    result = quantise.comparison(p_full, p_int8, None, threshold, band)
    assert result["label_changes"] == 6 and result["label_changes_outside_band"] == expected


def record(**changes):
    """A comparison as export_onnx.py stores it, within tolerance, of a model with a familiarity measure."""
    kept = dict(photos=300, max_p_difference=0.01, label_changes=2, label_changes_outside_band=0, roc_auc_full=0.9,
                roc_auc_int8=0.9, max_auc_drop=quantise.MAX_AUC_DROP, within_tolerance=True, from_sha256="ab" * 32,
                photos_from="val", familiar_to_unfamiliar=1, unfamiliar_to_familiar=1, familiarity_flips_outside_band=0,
                familiarity_band=quantise.FAMILIARITY_BAND, max_distance_change=0.03)  # fmt: skip
    return dict(kept, **changes)


WITHOUT_FAMILIARITY = ("familiar_to_unfamiliar", "unfamiliar_to_familiar", "familiarity_flips_outside_band",
                       "familiarity_band", "max_distance_change")  # fmt: skip
RULE_EDGES = {  # the record's numbers: whether the page may run the twin (its stored within_tolerance is ignored)
    "as kept": (record(), True),
    "ROC-AUC 0.0049 lower": (record(roc_auc_int8=0.9 - 0.0049), True),
    "ROC-AUC 0.0051 lower": (record(roc_auc_int8=0.9 - 0.0051), False),
    "ROC-AUC 0.0051 lower, a wider max_auc_drop recorded": (record(roc_auc_int8=0.8949, max_auc_drop=0.5), False),
    "ROC-AUC higher": (record(roc_auc_int8=0.95), True),
    "ROC-AUC not measured": (record(roc_auc_full=None, roc_auc_int8=None), False),
    "no label outside the band, 40 inside": (record(label_changes=40), True),
    "1 label outside the band": (record(label_changes_outside_band=1), False),
    "55 photos turn unfamiliar, 55 outside the band": (
        record(familiar_to_unfamiliar=55, familiarity_flips_outside_band=55),
        False,
    ),
    "1 flip outside the band": (record(familiarity_flips_outside_band=1), False),
    "flips counted with a band of 0.05": (record(familiarity_band=0.05), True),
    "flips counted with a band of 0.5": (record(familiarity_band=0.5), False),
    "no familiarity counts": ({k: v for k, v in record().items() if k not in WITHOUT_FAMILIARITY}, False),
}


@pytest.mark.parametrize("case", RULE_EDGES)
@pytest.mark.parametrize("stored", [True, False])
def test_the_pages_rule_is_recomputed_from_the_numbers_never_the_stored_verdict(case, stored):
    result, kept = RULE_EDGES[case]
    assert quantise.within_tolerance(dict(result, within_tolerance=stored), familiar=True) is kept


def test_a_model_without_a_familiarity_measure_needs_no_familiarity_counts():
    without = {k: v for k, v in record().items() if k not in WITHOUT_FAMILIARITY}
    assert quantise.within_tolerance(without, familiar=False)
    assert not quantise.within_tolerance(dict(without, label_changes_outside_band=1), familiar=False)


@pytest.mark.parametrize("drop, kept", [(0.0049, True), (0.0051, False)])
def test_the_roc_auc_may_fall_by_max_auc_drop_and_no_more(monkeypatch, drop, kept):
    aucs = iter([0.9, 0.9 - drop])
    monkeypatch.setattr(metrics, "roc_auc", lambda y, p: next(aucs))
    p = np.array([0.2, 0.8])
    result = quantise.comparison(p, p, np.array([0, 1]), threshold=0.5, band=0.02)
    assert result["within_tolerance"] is kept and quantise.MAX_AUC_DROP == 0.005


def test_without_labels_of_both_sides_it_is_not_within_tolerance():
    p = np.array([0.2, 0.8])
    result = quantise.comparison(p, p, np.array([1, 1]), threshold=0.5, band=0.02)
    assert result["roc_auc_full"] is None and not result["within_tolerance"]
    assert "ROC-AUC not measured" in quantise.comparison_text(result)


def test_familiarity_flips_are_counted_each_way_and_outside_the_band():
    limit, band = 10.0, quantise.FAMILIARITY_BAND
    rng = np.random.default_rng(0)
    d_full = np.concatenate([rng.uniform(0, 20, 200), [10.0, 10.4, 9.6, 12.0, 7.0, np.nan, 3.0]])
    d_int8 = np.concatenate([d_full[:200] * rng.uniform(0.97, 1.03, 200), [10.2, 9.9, 10.1, 9.0, 11.0, 5.0, np.nan]])
    # by hand, photo by photo: familiar is distance <= limit (NaN unfamiliar); near is |d_full - limit| <= band x limit
    to_unfamiliar = to_familiar = outside = 0
    for full, int8 in zip(d_full, d_int8):
        familiar_full, familiar_int8 = bool(full <= limit), bool(int8 <= limit)
        to_unfamiliar += familiar_full and not familiar_int8
        to_familiar += familiar_int8 and not familiar_full
        near = bool(abs(full - limit) <= band * limit)
        outside += familiar_full != familiar_int8 and not near
    assert to_unfamiliar >= 4 and to_familiar >= 3 and outside == 4  # 12 -> 9, 7 -> 11, NaN -> 5, 3 -> NaN
    assert quantise.familiarity_flips(d_full, d_int8, limit) == (to_unfamiliar, to_familiar, outside)
    p = np.full(len(d_full), 0.2)
    result = quantise.comparison(p, p, None, 0.5, 0.02, (d_full, d_int8), limit)
    assert result["familiar_to_unfamiliar"] == to_unfamiliar and result["unfamiliar_to_familiar"] == to_familiar
    assert result["familiarity_flips_outside_band"] == outside
    said = quantise.comparison_text(result)
    assert f"{to_unfamiliar} photos turn unfamiliar and {to_familiar} familiar ({outside} further than 5%" in said


@pytest.mark.parametrize("int8_distance, kept", [(9.9, True), (10.1, True), (10.6, False), (9.4, False)])
def test_a_twin_that_flips_one_photo_outside_the_band_is_not_within_tolerance(monkeypatch, int8_distance, kept):
    """Everything else equal and kept: one photo's full-model distance 9.4 or 10.6 with the limit at 10 (0.6 from
    it: outside the 5% band), or 9.9 or 10.1 (inside), and its twin distance on the other side of the limit."""
    monkeypatch.setattr(metrics, "roc_auc", lambda y, p: 0.9)
    p, y = np.array([0.2, 0.8, 0.3]), np.array([0, 1, 0])
    d_full = np.array([5.0, 6.0, 2 * 10.0 - int8_distance])  # the mirror of the twin's, across the limit
    result = quantise.comparison(p, p, y, 0.5, 0.02, (d_full, np.array([5.0, 6.0, int8_distance])), 10.0)
    assert result["familiar_to_unfamiliar"] + result["unfamiliar_to_familiar"] == 1
    assert result["within_tolerance"] is kept
    result = quantise.comparison(p, p, y, 0.5, 0.02, (d_full, d_full), 10.0)  # no flip: kept
    assert result["within_tolerance"] and result["max_distance_change"] == 0


@pytest.fixture(scope="module")
def twin(trained_onnx, demo_dataset):
    """export_onnx.py of the suite's trained model, with its int8 twin calibrated and judged on dataset/val
    (conftest.trained_onnx, shared: the tests here read it, and copy it before changing it)."""
    full = trained_onnx["full"]
    val, test = os.path.join(demo_dataset, "val"), os.path.join(demo_dataset, "test")
    assert trained_onnx["int8"] == quantise.quantised_path(full)
    return dict(full=full, int8=trained_onnx["int8"], stdout=trained_onnx["stdout"], val=val, test=test)


def test_export_writes_a_smaller_twin_that_says_how_it_compares(twin):
    # smaller, though the familiarity measure's float matrices (1792 x familiarity.RANK for B0) stay whole in both files
    assert os.path.getsize(twin["int8"]) < 0.75 * os.path.getsize(twin["full"])
    _, meta = model.load_onnx(twin["int8"])  # every check a model file gets
    result = meta["quantised"]
    assert result["from_sha256"] == files.file_sha256(twin["full"])
    # the comparison, recomputed here from the two files on the same photos
    x, y = [], []
    for side in meta["classes"]:
        for name in sorted(os.listdir(os.path.join(twin["val"], side))):
            img = photos.load_image(os.path.join(twin["val"], side, name))
            x.append(photos.preprocess(img, model_file.meta_data_config(meta)))
            y.append(int(side == "malignant"))
    x = np.stack(x)
    p = [quantise.p_malignant(ort.InferenceSession(f), x) for f in (twin["full"], twin["int8"])]
    assert result["photos"] == len(x) and result["max_p_difference"] == pytest.approx(np.abs(p[0] - p[1]).max())
    assert result["roc_auc_int8"] == pytest.approx(metrics.roc_auc(np.array(y), p[1]))
    d = [ort.InferenceSession(f).run(["familiarity_distance"], {"image": x})[0] for f in (twin["full"], twin["int8"])]
    familiar = [distance <= meta["familiarity"]["limit"] for distance in d]
    assert result["familiar_to_unfamiliar"] == np.sum(familiar[0] & ~familiar[1])
    assert result["unfamiliar_to_familiar"] == np.sum(~familiar[0] & familiar[1])
    assert f"wrote {twin['int8']} (" in twin["stdout"] and quantise.comparison_text(result) in twin["stdout"]


def test_a_twin_that_fails_the_check_every_model_file_gets_is_not_written(twin, tmp_path, monkeypatch, capsys):
    """A quantiser whose twin's familiarity distance came out 0 everywhere (here: the full model so rewired): the twin
    would call every photo familiar, so load_onnx would refuse it; export_onnx.py does not write it and says why."""
    full = str(tmp_path / "m.onnx")
    shutil.copy(twin["full"], full)

    def quantise_to_zero_distance(full_path, out_path, images):
        shutil.copy(full_path, out_path)
        changed_output(out_path, "familiarity_distance", None)

    monkeypatch.setattr(quantise, "quantise", quantise_to_zero_distance)
    _, meta = model.load_onnx(full)
    before = fingerprint(tmp_path, marks=False)
    args = SimpleNamespace(output=full, quantise_images=twin["val"], given=set())
    export_onnx.write_int8_twin(args, meta)
    limit = meta["familiarity"]["limit"]
    assert capsys.readouterr().out.strip() == (
        f"no int8 twin {tmp_path / 'm.int8.onnx'} written: it fails the check every model file gets (its "
        f"familiarity_distance puts none of the 3 check inputs (patterns unlike any photo) beyond its limit "
        f"{limit:.4g}: it could not tell an unfamiliar photo)"
    )
    assert fingerprint(tmp_path, marks=False) == before


def test_predict_takes_the_twin(twin, capsys):
    """predict.py reads the twin as any ONNX file of ours. Its int8 features move the familiarity distance too, so
    a photo may come out unfamiliar (exit 3) under the twin: an answer either way, never a refusal."""
    photo = os.path.join(twin["test"], "malignant", sorted(os.listdir(os.path.join(twin["test"], "malignant")))[0])
    status = predict.main([photo, "--model", twin["int8"]])
    first = capsys.readouterr().out.splitlines()[0]
    assert status == (predict.UNFAMILIAR_EXIT if first == "Prediction: unfamiliar" else None), (status, first)
    assert first.startswith(("Prediction: benign", "Prediction: malignant", "Prediction: unfamiliar"))


def set_result(path, **changes):
    proto = onnx.load(path)
    for prop in proto.metadata_props:
        if prop.key == "quantised":
            prop.value = json.dumps(dict(json.loads(prop.value), **changes))
    onnx.save(proto, path)


def test_the_page_runs_the_twin_only_when_it_is_this_exports_and_its_numbers_keep_within_tolerance(twin, tmp_path):
    """serve_web.py recomputes the rule from the twin's recorded numbers: a record saying 55 photos turn unfamiliar
    (outside the band) with within_tolerance true keeps the full model in the page, and predict.py and the page's
    model.json (read_model) carry the recomputed verdict (the page's caution); numbers that keep within tolerance
    put the twin in the page whatever the stored verdict says."""
    full, int8 = str(tmp_path / "m.onnx"), str(tmp_path / "m.int8.onnx")
    shutil.copy(twin["full"], full)
    shutil.copy(twin["int8"], int8)
    kept = {k: v for k, v in record().items() if k not in ("from_sha256", "photos_from")}
    set_result(int8, **dict(kept, within_tolerance=False))
    assert serve_web.page_model(full, True)[0] == int8
    assert serve_web.page_model(full, False) == (full, "the full model (--no-small-model)")
    for forged in [
        dict(familiar_to_unfamiliar=55, familiarity_flips_outside_band=55),
        dict(label_changes=3, label_changes_outside_band=1),
        dict(roc_auc_int8=0.9 - 0.0051),
    ]:
        set_result(int8, **dict(kept, **forged, within_tolerance=True))
        chosen, said = serve_web.page_model(full, True)
        assert chosen == full and "NOT within tolerance" in said, forged
        assert answer.STRAYED in answer.model_cautions(model.load_onnx(int8)[1])
        assert serve_web.read_model(int8)["quantised"]["within_tolerance"] is False
    set_self_check(int8, drop=["cam"])  # a twin that fails the check every model file gets (one of an earlier version)
    chosen, said = serve_web.page_model(full, True)
    assert chosen == full and said.endswith("its self_check holds no cam (exported by an earlier version); export "
                                            "the model again with export_onnx.py)")  # fmt: skip
    shutil.copy(twin["int8"], int8)
    set_result(int8, **dict(kept, within_tolerance=True, from_sha256="0" * 64))  # made from another export
    chosen, said = serve_web.page_model(full, True)
    assert chosen == full and "was not made from this export" in said
    os.remove(int8)
    assert "no int8 twin" in serve_web.page_model(full, True)[1]


@pytest.mark.parametrize(
    "full_distance, int8_distance, kept",
    [(10.3, 9.0, True), (9.7, 11.0, True), (11.0, 9.8, False), (9.0, 10.2, False)],
)
def test_the_familiarity_band_is_measured_from_the_full_models_distance_not_the_twins(
    monkeypatch, full_distance, int8_distance, kept
):
    """Limit 10, band 5% (0.5): a photo whose full-model distance lies within the band (10.3, 9.7) may flip however
    far the twin moves it (to 9.0, 11.0: kept); one whose full-model distance lies outside it (11.0, 9.0) may not,
    though the twin lands within the band (9.8, 10.2: refused). Kills the band measured from the twin's distance
    (`np.abs(d_int8 - limit)`) or from the nearer of the two in quantise.familiarity_flips, which the mirrored
    distances of test_a_twin_that_flips_one_photo_outside_the_band_is_not_within_tolerance cannot tell apart."""
    monkeypatch.setattr(metrics, "roc_auc", lambda y, p: 0.9)
    p, y, limit = np.array([0.2, 0.8, 0.3]), np.array([0, 1, 0]), 10.0
    d_full, d_int8 = np.array([5.0, 6.0, full_distance]), np.array([5.0, 6.0, int8_distance])
    near = abs(full_distance - limit) <= quantise.FAMILIARITY_BAND * limit  # by hand, from the full model's
    assert near is kept and (abs(int8_distance - limit) <= quantise.FAMILIARITY_BAND * limit) is not kept
    result = quantise.comparison(p, p, y, 0.5, 0.02, (d_full, d_int8), limit)
    assert result["familiar_to_unfamiliar"] + result["unfamiliar_to_familiar"] == 1
    assert result["familiarity_flips_outside_band"] == (0 if kept else 1)
    assert result["within_tolerance"] is kept
