"""skinlesion/card.py: the model card of a model as AItraining.py keeps it and an evaluation as evaluate.py makes it:
its YAML front matter (licence from the data's, library, tags, base model, datasets, metrics, the validation and
test results), every section, plain text where there were raw dicts, the chance warning first, subgroups only for
what the evaluation has, a data set without metadata, and the summary and test results read back."""

import functools
import hashlib
import json
import types

import numpy as np
import pandas as pd
import pytest

import AItraining
import model
from conftest import beta_binomial_range, front_matter
from evaluate import calibration_report, operating_report, subgroups
from skinlesion import card, dataset, files, isic, metrics, model_file

SECTIONS = ["## Model details", "## Intended use", "## Training data", "## Evaluation", "## Factors", "## Caveats"]
TYPES = {"nevus": "benign", "seborrheic keratosis": "benign", "basal cell carcinoma": "malignant",
         "melanoma": "malignant"}  # fmt: skip


def manifest(n=400, seed=0, lesion_types=False, licences=("CC-BY-NC",) * 380 + ("CC-BY",) * 20, metadata=True):
    """A manifest.csv as prepare_dataset.py writes it: 70% train, 15% val, 15% test, ~20% malignant."""
    rng = np.random.default_rng(seed)
    malignant = rng.random(n) < 0.2
    if lesion_types:
        label = np.where(malignant, rng.choice(list(TYPES)[2:], n), rng.choice(list(TYPES)[:2], n))
        value, column = label, "diagnosis_3"
    else:
        label = np.where(malignant, "malignant", "benign")
        value, column = np.where(malignant, "Malignant", "Benign"), "diagnosis_1"
    split = np.array(["train"] * int(0.7 * n) + ["val"] * int(0.15 * n) + ["test"] * (n - int(0.7 * n) - int(0.15 * n)))
    rows = dict(
        isic_id=[f"ISIC_{i:07d}" for i in range(n)],
        split=split,
        label=label,
        label_value=value,
        side=np.where(malignant, "malignant", "benign"),
        label_column=column,
        lesion_id=[f"IL_{i // 2:07d}" for i in range(n)],
        patient_id="",
    )
    if metadata:
        rows.update(
            image_type="dermoscopic",
            attribution=np.where(np.arange(n) < 0.75 * n, "Hospital Clínic de Barcelona", "ViDIR Group"),
            copyright_license=np.resize(licences, n),
            diagnosis_confirm_type="histopathology",
            fitzpatrick_skin_type=rng.choice(["II", "III", ""], n, p=[0.1, 0.1, 0.8]),
            sex=rng.choice(["female", "male", ""], n, p=[0.45, 0.45, 0.1]),
            age_approx=rng.choice(["25", "45", "65", "80", ""], n),
            anatom_site_1=rng.choice(["head/neck", "torso", ""], n),
        )
    rows["file"] = [f"{s}/{c}/ISIC_{i:07d}.jpg" for i, (s, c) in enumerate(zip(split, label))]
    return pd.DataFrame(rows).astype(str)


def class_weighted_logits(labels, malignant, seed):
    """Logits of a model trained with class weights: it tells the sides apart fairly well and thinks half the
    photos are malignant."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(labels), len(malignant))) + 1.5 * np.eye(len(malignant))[labels]
    logits[:, malignant] += rng.normal(0, 0.5, (len(labels), 1)) + 1.4 * malignant[labels][:, None]
    return logits


HUB_START = dict(source="timm/efficientnet_b0.ra_in1k")  # what backbone.imagenet_model records of the hub's weights


@functools.cache
def b0():
    """EfficientNet-B0 (random weights): checkpoint_state reads the network's shape from it."""
    return model.build_model(pretrained=False)[0]


def trained(lesion_types=False, imagenet=HUB_START, rows=None, seed=0, **data):
    """A model file's meta as AItraining.py writes it: model_file.checkpoint_state with the data summary, settings,
    and what AItraining.scored keeps of the validation predictions."""
    rows = manifest(lesion_types=lesion_types) if rows is None else rows
    classes, malignant, names = dataset.classes_of(rows)
    meta = dict(
        classes=classes,
        malignant_classes=malignant,
        class_names=[names[c] for c in classes],
        settings=dict(
            recipe="finetune",
            why="ImageNet weights loaded",
            **model.RECIPES["finetune"],
            batch_size=32,
            image_size=224,
            seed=42,
            target_sensitivity=0.9,
            amp=False,
            run="20260101-120000",
        ),
        data=dict(dataset.data_summary(rows, classes, "dataset"), **data),
        imagenet=imagenet,
    )
    mask = model.malignant_mask(meta)
    labels = np.array([classes.index(c) for c in rows.label[rows.split == "val"]])
    labels = np.r_[labels, np.resize(labels, 300 - len(labels))]  # 300 validation photos
    kept = AItraining.scored(labels, class_weighted_logits(labels, mask, seed), meta, 0.9)[1]
    cfg = dict(input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    cfg.update(interpolation="bicubic", crop_pct=0.875)
    state = model_file.checkpoint_state(b0(), cfg, epoch=7, **meta, **kept)  # as AItraining.py calls it
    return state["meta"]


def evaluated(meta, rows=None, seed=1, n=400, columns=("sex", "age_approx", "anatom_site_1")):
    """evaluate.py's result for a test split of n photos (its own functions where it has them); the subgroups of
    the manifest columns given."""
    mask = model.malignant_mask(meta)
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(meta["classes"]), n, p=np.where(mask, 0.2 / mask.sum(), 0.8 / (~mask).sum()))
    logits = class_weighted_logits(labels, mask, seed)
    y = mask[labels].astype(int)
    p = model.predictions([logits], meta)[0]
    before = model.predictions([logits], dict(meta, calibration=None))[0]
    args = types.SimpleNamespace(n_bootstrap=300, seed=0)
    scores = metrics.binary_metrics(y, p, meta["threshold"])
    ci = metrics.bootstrap_ci(y, p, 300, 0, threshold=meta["threshold"])
    test_rows = (manifest(n) if rows is None else rows)[list(columns)].reset_index(drop=True)
    return dict(
        data_dir="dataset/test",
        n_images={c: int((labels == i).sum()) for i, c in enumerate(meta["classes"])},
        metrics=scores,
        ci95={k: list(v) for k, v in ci.items()},
        at_chance=metrics.at_chance(ci["roc_auc"]),
        operating_point=operating_report(y, p, meta, scores, ci),
        calibration=calibration_report(y, before, p, meta.get("calibration"), args),
        subgroups=subgroups(y, p, test_rows, args),
    )


@pytest.fixture(scope="module")
def meta():
    return trained()


@pytest.fixture(scope="module")
def evaluation(meta):
    return evaluated(meta)


# ---------------------------------------------------------------------------- the front matter
def test_front_matter_is_the_hugging_face_header(meta):
    header = front_matter(card.render(meta, "skin_model.pth"))
    assert header["license"] == "cc-by-nc-4.0"  # 380 photos CC-BY-NC, 20 CC-BY: the most restrictive wins
    assert header["library_name"] == "timm" and header["pipeline_tag"] == "image-classification"
    assert {"efficientnet_b0", "dermatology", "skin-lesion", "not-a-medical-device"} <= set(header["tags"])
    assert header["base_model"] == "timm/efficientnet_b0.ra_in1k" and header["datasets"] == ["ISIC Archive"]
    assert header["metrics"] == ["roc_auc", "sensitivity", "specificity", "expected_calibration_error"]
    (index,) = header["model-index"]
    (validation,) = index["results"]
    assert index["name"] == "skin_model.pth" and validation["dataset"]["split"] == "validation"
    found = {m["type"]: m["value"] for m in validation["metrics"]}
    expected = {key: round(meta["val_metrics"][key], 4) for key in ("roc_auc", "sensitivity", "specificity")}
    assert found == dict(expected, expected_calibration_error=round(meta["calibration"]["val_ece_after"], 4))
    assert "base_model" not in front_matter(card.render(dict(meta, imagenet=False), "m.pth"))


def test_front_matter_holds_the_test_results_once_evaluated(meta, evaluation):
    header = front_matter(card.render(meta, "skin_model.pth", evaluation))
    validation, test = header["model-index"][0]["results"]
    assert validation["dataset"]["split"] == "validation" and test["dataset"]["split"] == "test"
    found = {m["type"]: m["value"] for m in test["metrics"]}
    expected = {key: round(evaluation["metrics"][key], 4) for key in ("roc_auc", "sensitivity", "specificity")}
    assert found == dict(expected, expected_calibration_error=round(evaluation["calibration"]["ece_after"], 4))
    low, high = evaluation["ci95"]["roc_auc"]
    assert test["metrics"][0]["name"] == f"ROC-AUC (test, 95% CI {low:.3f}-{high:.3f})"


@pytest.mark.parametrize(
    "licences,expected",
    [
        ({"CC-BY-NC": 380, "CC-BY": 20}, "cc-by-nc-4.0"),
        ({"CC-BY": 5, "CC-0": 90}, "cc-by-4.0"),
        ({"CC-0": 3}, "cc0-1.0"),
        ({"unknown": 3}, "other"),
        ({}, "other"),
    ],
)
def test_the_licence_is_the_most_restrictive_of_the_data(licences, expected):
    assert card.licence_id(licences) == expected


# ---------------------------------------------------------------------------- the text
def test_every_section_in_plain_text(meta, evaluation):
    text = card.render(meta, "skin_model.pth", evaluation)
    assert [line for line in text.splitlines() if line.startswith("## ")] == [
        s if s != "## Caveats" else "## Caveats and recommendations" for s in SECTIONS
    ]
    assert "**Out of scope:** diagnosis, triage or screening of patients; photo types other than dermoscopic" in text
    assert "Fitzpatrick skin types I, IV, V, VI (no photos, or not recorded)" in text
    assert "{" not in text.split("---\n", 2)[2] and "[" not in text.split("## Model details")[1].split("##")[0]
    versions = meta["versions"]
    assert f"Versions: torch {versions['torch']}, timm {versions['timm']}, pillow {versions['pillow']}." in text
    assert "- Classes: benign and malignant; P(malignant)" in text
    assert f"Licences: CC-BY-NC {380}, CC-BY {20}." in text
    assert "Attribution (most photos first): Hospital Clínic de Barcelona; ViDIR Group;" in text
    assert "Split: photos sharing lesion_id stay in one split" in text
    counts = ", ".join(f"{c} {n}" for c, n in evaluation["n_images"].items())
    assert f"**Test** (`dataset/test`: {counts} photos)" in text
    assert "| ROC-AUC |" in text and "| balanced accuracy |" in text and "| ECE |" in text
    op = meta["operating_point"]
    assert f"at this threshold the model caught {op['sensitivity']:.0%} [" in text
    assert f"Calibration: {meta['calibration']['method'].replace('platt', 'Platt')} scaling" in text
    lines = text.splitlines()
    for i, line in enumerate(lines[:-2]):  # lists are tight: no blank line between two items
        assert not (line.startswith("- ") and lines[i + 1] == "" and lines[i + 2].startswith("- ")), line


FORGED = {  # text a data file may hold (each printable, so a model file may hold it): what markdown must not read
    "class": "<script>alert(1)</script> | x",
    "accent": "Mélanome, NOS",
    "attribution": "Dr. *Smith* [site](http://x) & `co` ## Injected heading",
    "value": "torso | fake cell",
}


def html_of(markdown_text):
    import markdown

    return markdown.markdown(markdown_text.split("---\n", 2)[2], extensions=["tables"])


@pytest.mark.parametrize("forged", [False, True])
def test_text_from_a_data_file_is_shown_as_it_is_in_the_card(meta, evaluation, forged):
    """Class names, attributions, metadata values and paths are text in the card: no HTML, no extra heading, link
    or table cell (rendered with Python-Markdown); the names read as they were ('Mélanome, NOS' too)."""
    import re

    rows = manifest(lesion_types=True)
    if forged:
        rows["label"] = rows.label.replace({"melanoma": FORGED["class"], "nevus": FORGED["accent"]})
        rows["attribution"] = FORGED["attribution"]
        rows["anatom_site_1"] = rows.anatom_site_1.replace("torso", FORGED["value"])
    crafted = trained(lesion_types=True, rows=rows)
    assert model_file.meta_fault(crafted) is None  # printable text: a model file may hold it
    html = html_of(card.render(crafted, "<b>m</b>.pth", dict(evaluation, data_dir="data|<i>x</i>")))
    plain = html_of(card.render(trained(lesion_types=True), "<b>m</b>.pth", evaluation))
    for tag in ("h1", "h2", "h3", "script", "a", "i", "b", "em", "code", "th", "td"):
        assert html.count(f"<{tag}>") + html.count(f"<{tag} ") == plain.count(f"<{tag}>") + plain.count(f"<{tag} ")
    text = html.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&#124;", "|")
    assert "<b>m</b>.pth" in text and "data|<i>x</i>" in text
    if forged:
        for value in FORGED.values():
            assert value in text, value
        header = re.search(r"<tr>\s*<th>split</th>.*?</tr>", html, re.S).group()
        assert header.count("<th>") == 5  # split and the four classes: the | stayed in its cell


def test_the_card_shows_the_model_files_sha256(meta, tmp_path):
    path = tmp_path / "skin_model.pth"
    path.write_bytes(b"weights")
    card.write_card(str(tmp_path / "skin_model.md"), meta, path.name, model_sha256=files.file_sha256(str(path)))
    expected = hashlib.sha256(b"weights").hexdigest()
    text = (tmp_path / "skin_model.md").read_text()
    assert f"- Model file: skin_model.pth, SHA-256 {expected} (compare it with the published one)." in text
    assert "- Model file: m.pth, SHA-256 not recorded" in card.render(meta, "m.pth")


def test_one_identity_per_model_the_card_lists_the_exports_and_keeps_them(meta, evaluation, tmp_path):
    """The card lists the SHA-256 of the .pth, the .onnx and the int8 twin (export_onnx.py records them); an
    evaluation rewriting the card keeps them (they are embedded with the results), for this model file only."""
    path = str(tmp_path / "skin_model.md")
    exports = {"skin_model.onnx": "a" * 64, "skin_model.int8.onnx": "b" * 64}
    card.write_card(path, meta, "skin_model.pth", evaluation, None, "c" * 64, exports)
    text = (tmp_path / "skin_model.md").read_text()
    assert f"- Model file: skin_model.pth, SHA-256 {'c' * 64} (compare" in text
    assert f"- Exported by export_onnx.py: skin_model.onnx, SHA-256 {'a' * 64}." in text
    assert f"- Exported by export_onnx.py: skin_model.int8.onnx, SHA-256 {'b' * 64}." in text
    assert card.embedded(path, "c" * 64)["exports"] == exports and card.embedded(path, "d" * 64) is None


def test_the_card_says_each_warning_and_an_external_sets_photos_beside_the_training_ones(meta, evaluation):
    """evaluate.py's warnings (a figure outside what validation stated) are in the card; an external data set's
    section names its image types and malignant share beside the training photos'."""
    warning = "the test specificity 33% lies outside the 95% interval validation stated for it (63% [45-80%])"
    photos = dict(n_photos=598, malignant_share=0.11, image_types={"dermoscopic": 598})
    external = dict(evaluation, data_dir="clinic_b", warnings=[warning], photos=photos)
    text = card.render(dict(meta, prior_malignant=0.5), "m.pth", dict(evaluation, warnings=[warning]), {"B": external})
    assert text.count(f"**Warning**: {card.markdown_text(warning)}.") == 2  # as markdown shows it
    trained = ", ".join(f"{t} {n}" for t, n in meta["data"]["factors"]["image type"]["train"].items())
    said = f"Photos: 598, of image type dermoscopic 598 (training photos: {trained}); 11% malignant (training photos: "
    said += "50%)."
    assert said in text.split("**External validation: B**")[1]


def test_a_lesion_type_model_names_its_types_by_side():
    meta = trained(lesion_types=True)
    text = card.render(meta, "types.pth")
    found = meta["val_types"]  # AItraining.scored's, from the one calibrated distribution
    low, high = found["balanced_accuracy_ci95"]
    assert f"Validation lesion types: balanced accuracy {found['balanced_accuracy']:.2f} [{low:.2f}-{high:.2f}]" in text
    assert set(found["types"]) == set(meta["classes"]) and "(95% intervals in brackets)" in text
    assert (
        f"validation lesion types: balanced accuracy {found['balanced_accuracy']:.2f}" in card.summary(meta)["how_well"]
    )
    assert "- Classes: nevus and seborrheic keratosis (benign); basal cell carcinoma and melanoma (malignant);" in text
    assert "| split | nevus | seborrheic keratosis | basal cell carcinoma | melanoma |" in text


def test_a_model_at_chance_says_so_at_the_top(meta, evaluation):
    chance = dict(meta, at_chance=True)
    text = card.render(chance, "m.pth")
    body = text.split("# Model card: m.pth\n\n", 1)[1]
    assert body.startswith("> **This model cannot be told from chance**")
    assert "cannot be told from chance" not in card.render(meta, "m.pth")
    tested = card.render(meta, "m.pth", dict(evaluation, at_chance=True)).split("# Model card: m.pth\n\n", 1)[1]
    assert tested.startswith("> **On the test photos this model cannot be told from chance**")


def test_subgroups_only_for_the_factors_the_evaluation_has(meta):
    evaluation = evaluated(meta, n=600, columns=("sex", "age_approx"))
    assert set(evaluation["subgroups"]) == {"sex", "age band"}
    text = card.render(meta, "m.pth", evaluation)
    assert "Test ROC-AUC by sex:" in text and "Test ROC-AUC by age band:" in text
    assert "by body site" not in text and "by skin type" not in text
    for groups in evaluation["subgroups"].values():
        for group, result in groups.items():
            assert f"| {group} | {result['photos']} | {result['text']} |" in text
    texts = [r["text"] for groups in evaluation["subgroups"].values() for r in groups.values()]
    assert "too few photos to report" in texts and any(t[0].isdigit() for t in texts)  # both kinds shown


@pytest.mark.parametrize("rows", ["no manifest", "no metadata columns"])
def test_a_data_set_without_metadata_gives_unknown(rows):
    rows = None if rows == "no manifest" else manifest(metadata=False)
    meta = trained(rows=manifest(metadata=False))
    meta["data"] = dataset.data_summary(rows, meta["classes"], "dataset")
    text = card.render(meta, "m.pth")
    assert front_matter(text)["license"] == "other"
    assert "Licences: unknown" in text and "Attribution (most photos first): unknown;" in text
    split = "Split: not by lesion or patient" if rows is None else "Split: photos sharing lesion_id stay in one split"
    assert split in text
    assert "photo types it may not have seen (not recorded)" in text and "None" not in text
    summary = card.summary(meta)
    recorded = "Skin type was not recorded for these photos: how the model does on any skin type"
    assert recorded in text and recorded in " ".join(summary["limits"])
    assert "Age was not recorded" in text and "Fitzpatrick" not in text + str(summary) and "ages 0-29" not in text
    assert text.count("darker skin") == 1  # said once
    assert "type unknown" in summary["trained_on"] and "{" not in str(summary["trained_on"])


# ---------------------------------------------------------------------------- read back
def test_the_summary_carries_the_test_results_as_the_card_names_them(meta, evaluation):
    """export_onnx.py reads evaluate.py's results (evaluation.json), not the card: named as the front matter names
    them; anything else is no results."""
    tested = card.test_results(json.loads(json.dumps(evaluation)))  # as read back from evaluation.json
    front = {m["type"]: (m["value"], m["name"]) for m in front_matter(card.render(meta, "m.pth", evaluation))[
        "model-index"][0]["results"][1]["metrics"]}  # fmt: skip
    assert tested == front and tested["roc_auc"][0] == round(evaluation["metrics"]["roc_auc"], 4)
    summary = card.summary(meta, tested)
    assert set(summary) == {"trained_on", "how_well", "intended_use", "limits", "tested", "test_point"}
    train = sum(meta["data"]["counts"]["train"].values())  # the photos it learned from, not all 400 prepared
    assert 0 < train < 400 and summary["trained_on"].startswith(f"{train} ISIC photos (dermoscopic); classes: benign")
    m = evaluation["metrics"]  # the figures PPV and NPV come from (card.result_entry rounds them to 4 digits)
    assert summary["test_point"] == {k: round(m[k], 4) for k in ("sensitivity", "specificity")}
    m, ci = evaluation["metrics"], evaluation["ci95"]
    sens, spec = (f"{m[k]:.0%} [{100 * ci[k][0]:.0f}-{ci[k][1]:.0%}]" for k in ("sensitivity", "specificity"))
    auc = f"ROC-AUC {m['roc_auc']:.2f} [{round(ci['roc_auc'][0], 3):.2f}-{round(ci['roc_auc'][1], 3):.2f}]"
    assert (
        f"on the test photos, at the same threshold, it caught {sens} of the malignant, cleared {spec} of the benign, "
        f"{auc} (brackets: 95% intervals)"
    ) in summary["how_well"]
    assert "(test, 95% CI" not in summary["how_well"]  # no key pasted from the front matter
    assert summary["tested"] in summary["how_well"] and summary["tested"].startswith("on the test photos")
    assert "at this threshold the model caught" in summary["how_well"] and summary["limits"][0] == card.NOT_A_DEVICE
    for other in (None, {}, {"metrics": "high"}, {"metrics": {"roc_auc": "high"}}, [1]):
        assert card.test_results(other) is None
    assert model_file.KEYS["card_summary"].shape.test(summary) is None  # what a model file may hold


def test_factor_tables_list_the_splits_in_order_and_unknown_last(meta):
    factors = meta["data"]["factors"]
    assert set(factors) == set(isic.FACTORS)
    text = card.factor_tables(factors)
    assert "| sex | train | val | test |" in text
    sex = text.split("**sex**")[1].split("**")[0]
    assert sex.index("| female |") < sex.index("| male |") < sex.index("| unknown |")


@pytest.mark.parametrize("specificity, tn, held", [(0.43, 13, "yes"), (0.13, 4, "NO")])
def test_the_card_says_whether_each_test_figure_held_against_what_as_many_photos_show(
    meta, evaluation, specificity, tn, held
):
    """Folds stated 91% [86-95%] and 34% [27-41%] on 170 photos of each class: the test's figure on its 30 photos
    holds where it lies within the beta-binomial range of 30 photos (summed by hand in conftest), not where it lies
    inside the narrower stated interval. Wrong code caught: the range of the stated photos' count, the stated
    interval taken for the range, the counts of the other class."""
    op = dict(sensitivity=0.91, sensitivity_ci95=[0.86, 0.95], specificity=0.34, specificity_ci95=[0.27, 0.41])
    folded = dict(meta, operating_point=dict(meta["operating_point"], **op, n_malignant=170, n_benign=170))
    folded["folds"] = dict(k=5, photos=340, deployed="ensemble", epochs=[7, 8, 6, 9, 7])
    figures = dict(evaluation["metrics"], sensitivity=29 / 30, tp=29, fn=1, specificity=specificity, tn=tn, fp=30 - tn)
    text = card.render(folded, "m.pth", dict(evaluation, metrics=figures))
    low, high = beta_binomial_range(0.34 * 170, 170, 30)
    row = f"| specificity | 34% \\[27-41%\\] | {specificity:.0%} of 30 | {100 * low:.0f}-{high:.0%} | {held} |"
    assert row in text, text
    low, high = beta_binomial_range(0.91 * 170, 170, 30)
    assert f"| sensitivity | 91% \\[86-95%\\] | 97% of 30 | {100 * low:.0f}-{high:.0%} | yes |" in text
    assert (
        "| at the threshold | stated on out-of-fold photos \\[95% CI\\] | Test | as many photos show | held |" in text
    )
    older = dict(folded, operating_point={k: v for k, v in folded["operating_point"].items() if not k.startswith("n_")})
    assert "as many photos show" not in card.render(older, "m.pth", dict(evaluation, metrics=figures))


def test_the_test_figures_are_read_back_only_where_the_card_names_this_model_files_sha256(meta, evaluation, tmp_path):
    """The results embedded in our card are this model file's only where they name its SHA-256: another file's, no
    SHA-256 asked for, or a card of ours whose results name none (written by hand through the ledger, as an older
    writer might have) give no test figures, so predict.py shows no Tested line and export_onnx.py puts none in the
    page's summary. Kills the comparison made only when a SHA-256 is given (`model_sha256 and ...`) or a card
    without one taken as this file's (`kept.get("model_sha256", model_sha256)`) in card.embedded; another file's
    card is tests/test_predict.py::test_ppv_and_npv_come_from_the_test_figures_with_the_validation_ones_beside."""
    from skinlesion import ledger

    path = str(tmp_path / "skin_model.md")
    card.write_card(path, meta, "skin_model.pth", evaluation, None, "c" * 64)
    test, _ = card.earlier_evaluations(path, "c" * 64)
    assert test == json.loads(json.dumps(evaluation))  # the nearest that must be read back
    assert card.earlier_evaluations(path, "d" * 64) == (None, {})
    assert card.earlier_evaluations(path, None) == (None, {}) and card.earlier_evaluations(path, "") == (None, {})
    kept = dict(test=evaluation, externals={}, exports={})  # no model_sha256
    text = card.render(meta, "skin_model.pth", evaluation) + card.EMBEDDED + json.dumps(kept) + " -->\n"
    files.write_text(path, text, "model card")
    assert ledger.why_not_ours(path, "model card") is None  # ours and unchanged: only the SHA-256 is missing
    assert card.earlier_evaluations(path, "c" * 64) == (None, {})
