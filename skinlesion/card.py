"""The model card (Mitchell et al. 2019, in the Hugging Face format; items of the CLEAR Derm checklist): what the
model is, what it learned from (counts, image types, licences, attribution, how the split kept lesions and
patients apart), how well it does on validation and, once evaluate.py ran, on test, overall and for whom (sex,
age band, body site, skin type), where it must not be used, and its caveats. AItraining.py writes it beside
the model (skin_model.md), evaluate.py rewrites it with the test results, export_onnx.py carries its summary
into the ONNX file, and the web page shows that summary."""

import datetime

import yaml

from skinlesion import dataset
from skinlesion.files import TAG, write_text
from skinlesion.metrics import operating_point_text

LICENCES = {"CC-BY-NC": "cc-by-nc-4.0", "CC-BY": "cc-by-4.0", "CC-0": "cc0-1.0"}  # most restrictive first
METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "f1": "F1", "roc_auc": "ROC-AUC", "ece": "ECE",
                "brier": "Brier score"}  # fmt: skip
MIN_PER_CLASS = 20  # a subgroup is reported only with at least this many photos of each side
TAGS = ["image-classification", "dermatology", "skin-lesion", "isic-archive", "not-a-medical-device"]
NOT_A_DEVICE = (
    "This is not a medical device: it is not approved or validated for diagnosis and must never replace a doctor."
)


def listed(names):
    """'a', 'a and b', 'a, b and c'."""
    names = [str(n) for n in names]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def counted(counts):
    """{name: number} as 'name number, name number'."""
    return ", ".join(f"{name} {number}" for name, number in counts.items()) or "unknown"


def sides(meta):
    """'benign and malignant', or the lesion types by side: 'nevus (benign); melanoma and bcc (malignant)'."""
    classes, malignant = meta["classes"], meta.get("malignant_classes", ["malignant"])
    if classes == ["benign", "malignant"]:
        return "benign and malignant"
    by_side = {side: [c for c in classes if (c in malignant) == (side == "malignant")] for side in dataset.SIDES}
    return "; ".join(f"{listed(names)} ({side})" for side, names in by_side.items())


def licence_id(licences):
    """The Hugging Face licence id of the data's most restrictive licence."""
    return next((hf for name, hf in LICENCES.items() if name in licences), "other")


def front_matter(meta, evaluation, name):
    """The card's YAML header: licence, library, tags, base model, datasets, metrics, model-index results."""
    results = [result_entry(name, "validation", meta["val_metrics"], meta.get("calibration"), "val_ece_after")]
    if evaluation:
        test = evaluation["metrics"], evaluation.get("calibration"), "ece_after", evaluation.get("ci95")
        results.append(result_entry(name, "test", *test))
    header = dict(
        license=licence_id(meta.get("data", {}).get("licences", {})),
        library_name="timm",
        tags=TAGS + [meta["model_name"]],
        datasets=["ISIC Archive"],
        pipeline_tag="image-classification",
        metrics=["roc_auc", "sensitivity", "specificity", "expected_calibration_error"],
        **{"model-index": [dict(name=name, results=results)]},
    )
    if meta.get("imagenet"):
        header["base_model"] = f"timm/{meta['model_name']}.ra_in1k"
    return yaml.safe_dump(header, sort_keys=False, allow_unicode=True)


def result_entry(name, split, scores, calibration, ece_key, ci95=None):
    """One model-index result: ROC-AUC, sensitivity and specificity at the threshold (95% CIs in their names
    where known), ECE after calibration."""
    found = []
    for key, label in [("roc_auc", "ROC-AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity")]:
        interval = f", 95% CI {ci95[key][0]:.3f}-{ci95[key][1]:.3f}" if ci95 and key in ci95 else ""
        found.append(dict(type=key, name=f"{label} ({split}{interval})", value=round(scores[key], 4)))
    if calibration and calibration.get(ece_key) is not None:
        found.append(
            dict(type="expected_calibration_error", name=f"ECE ({split})", value=round(calibration[ece_key], 4))
        )
    return dict(
        task=dict(type="image-classification", name="benign vs malignant"),
        dataset=dict(type="isic-archive", name=f"ISIC Archive export, {split} split", split=split),
        metrics=found,
    )


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def factor_tables(factors):
    """A table per factor: its values' photos per split, unknown included."""
    found = [f"**{f}**\n\n" + table([f, *splits], rows) for f, (splits, rows) in dataset.factor_rows(factors).items()]
    return "\n\n".join(found) or "No metadata columns for these factors: all unknown."


def evaluation_section(meta, evaluation):
    """Validation results (what the threshold and calibration were chosen on) and, if run, the test results."""
    m, ci, op, cal = meta["val_metrics"], meta["val_auc_ci95"], meta.get("operating_point"), meta.get("calibration")
    text = [
        f"**Validation** (the split the best epoch, the calibration and the threshold were chosen on): ROC-AUC "
        f"{m['roc_auc']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})."
    ]
    if op:
        text.append(f"Operating point: threshold {op['threshold']:.3f} on P(malignant); {operating_point_text(op)}.")
    if cal:
        text.append(
            f"Calibration: {cal['method'].replace('platt', 'Platt')} scaling (a = {cal['a']:.3f}, b = "
            f"{cal['b']:.3f}); validation log-loss {cal['val_log_loss_before']:.3f} -> "
            f"{cal['val_log_loss_after']:.3f}, ECE {cal['val_ece_before']:.3f} -> {cal['val_ece_after']:.3f}."
        )
    if not evaluation:
        text.append("**Test**: not evaluated yet; run `python evaluate.py`, which adds its results here.")
        return "\n\n".join(text)
    rows = [
        [METRIC_NAMES.get(key, key), f"{evaluation['metrics'][key]:.3f}", f"{low:.3f}-{high:.3f}"]
        for key, (low, high) in evaluation["ci95"].items()
    ]
    text.append(
        f"**Test** (`{evaluation['data_dir']}`: {counted(evaluation['n_images'])} photos), by evaluate.py, at the "
        "validation threshold:\n\n" + table(["metric", "value", "95% CI"], rows)
    )
    cal = evaluation.get("calibration") or {}
    rows = [[METRIC_NAMES[k], f"{cal[k + '_before']:.3f}", f"{cal[k + '_after']:.3f}"] for k in ("ece", "brier") if cal]
    if rows:
        text.append(table(["calibration on test", "before", "after"], rows))
    for factor, groups in evaluation.get("subgroups", {}).items():
        rows = [[g, r["photos"], r.get("text", "")] for g, r in groups.items()]
        text.append(f"Test ROC-AUC by {factor}:\n\n" + table([factor, "photos", "ROC-AUC (95% CI)"], rows))
    return "\n\n".join(text)


def render(meta, name, evaluation=None):
    """The whole card as markdown."""
    data, settings = meta.get("data", {}), meta.get("settings", {})
    start = "ImageNet weights (timm/efficientnet_b0.ra_in1k)" if meta.get("imagenet") else "random weights"
    lines = [
        f"---\n{front_matter(meta, evaluation, name)}---",
        f"<!-- {TAG}; regenerated by AItraining.py and evaluate.py -->",
        f"# Model card: {name}",
    ]
    if meta.get("at_chance"):
        lines.append(
            "> **This model cannot be told from chance**: the 95% interval of its validation ROC-AUC includes "
            "0.5. Do not use its predictions."
        )
    if evaluation and evaluation.get("at_chance"):
        lines.append("> **On the test photos this model cannot be told from chance** (ROC-AUC interval includes 0.5).")
    lines += [
        f"> {NOT_A_DEVICE}",
        "## Model details",
        f"- Architecture: {meta['model_name']} (timm), started from {start}; recipe {settings.get('recipe')} "
        f"({', '.join(f'{k} {settings[k]}' for k in ('optimizer', 'lr', 'epochs') if k in settings)}); best epoch "
        f"{meta.get('epoch')}.\n- Classes: {sides(meta)}; P(malignant) is the summed probability of the malignant "
        f"ones.\n- Input: {meta['image_size']} x {meta['image_size']} px centre crop ({meta['interpolation']}, "
        f"crop_pct {meta['crop_pct']}). Versions: {counted(meta.get('versions', {}))}. Date: {datetime.date.today()}.",
        "## Intended use",
        "Research and teaching: to study how such a classifier behaves on photos like those "
        "it was trained on, one lesion per photo, centred.",
        "**Out of scope:** diagnosis, triage or screening of patients; " + "; ".join(dataset.not_covered(data)) + ".",
        "## Training data",
        training_data(meta["classes"], data),
        "## Evaluation",
        evaluation_section(meta, evaluation),
        "## Factors",
        "Whom and what the photos show, per split (unknown: not in the metadata).",
        factor_tables(data.get("factors", {})),
        "## Caveats and recommendations",
        caveats(meta, data),
    ]
    return "\n\n".join(lines) + "\n"


def training_data(classes, data):
    """Where the photos came from, how many per split and class, their licences and authors, how they were split."""
    counts = [[split] + list(n.values()) for split, n in data.get("counts", {}).items()]
    grouping = data.get("grouping", "")
    split = f"photos sharing {grouping} stay in one split, so validation and test photos are not near-copies of "
    split += "training ones."
    if not grouping.startswith(("lesion_id", "patient_id")):
        split = "not by lesion or patient (no lesion_id or patient_id known): photos of one lesion may sit in two "
        split += "splits, so "
        split += "validation and test results may be optimistic."
    return "\n\n".join(
        [
            f"From `{data.get('source')}` (label column `{data.get('label_column', 'unknown')}`). Photos per split "
            "and class:",
            table(["split"] + classes, counts) if counts else "unknown (no manifest.csv).",
            f"Licences: {counted(data.get('licences', {}))}. Attribution (most photos first): "
            f"{'; '.join(data.get('attributions', {})) or 'unknown'}; the full list travels with the data "
            "(attribution.txt, licenses/).",
            f"Split: {split}",
        ]
    )


def caveats(meta, data):
    found = [
        "P(malignant) is calibrated on the validation split: it reads as a chance only where malignant "
        "lesions are about as common as there.",
        "No external validation: test photos come from the same export.",
    ]
    if data.get("synthetic"):
        found.insert(0, "Trained on SYNTHETIC drawings (make_demo_data.py): it knows nothing about real skin.")
    if "skin type" in data.get("factors", {}):
        found.append("Skin type is unknown for most photos in ISIC exports: performance on darker skin is not known.")
    return "\n".join(f"- {c}" for c in found)


def write_card(path, meta, name, evaluation=None):
    write_text(path, render(meta, name, evaluation))


def test_results(path):
    """{metric type: (value, name)} of the test results evaluate.py put in a card's front matter, or None."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        header = yaml.safe_load(text.split("---", 2)[1])
        results = header["model-index"][0]["results"]
    except (IndexError, KeyError, TypeError, yaml.YAMLError):
        return None
    test = [r for r in results if r.get("dataset", {}).get("split") == "test"]
    return {m["type"]: (m["value"], m["name"]) for m in test[0]["metrics"]} if test else None


def summary(meta, tested=None):
    """The card in four short texts, for the ONNX file and the page's 'About this model'."""
    data, m, ci = meta.get("data", {}), meta["val_metrics"], meta["val_auc_ci95"]
    photos = sum(sum(counts.values()) for counts in data.get("counts", {}).values())
    types = ", ".join(v for v in data.get("factors", {}).get("image type", {}).get("train", {}) if v != "unknown")
    how_well = f"validation ROC-AUC {m['roc_auc']:.2f} (95% CI {ci[0]:.2f}-{ci[1]:.2f})"
    if tested and "roc_auc" in tested:
        how_well += f"; {tested['roc_auc'][1]}: {tested['roc_auc'][0]:.2f}"
    if meta.get("operating_point"):
        how_well += "; " + operating_point_text(meta["operating_point"])
    trained_on = f"{photos or 'an unknown number of'} ISIC photos ({types or 'type unknown'}); classes: {sides(meta)}"
    if data.get("synthetic"):
        trained_on += " (SYNTHETIC demo drawings, not real lesions)"
    limits = [NOT_A_DEVICE] + [f"Not for {gap}." for gap in dataset.not_covered(data)]
    return dict(
        trained_on=trained_on,
        how_well=how_well,
        intended_use="research and teaching, on photos like the training ones, one lesion per photo, centred",
        limits=limits,
    )
