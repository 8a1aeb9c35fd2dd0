"""The model card (Mitchell et al. 2019, in the Hugging Face format; items of the CLEAR Derm checklist): what the
model is, what it learned from (counts, image types, licences, attribution, how the split kept lesions and
patients apart), how well it does on validation and, once evaluate.py ran, on test, overall and for whom (sex,
age band, body site, skin type), where it must not be used, and its caveats. AItraining.py writes it beside
the model (skin_model.md), evaluate.py rewrites it with the test results, export_onnx.py carries its summary
into the ONNX file, and the web page shows that summary."""

import datetime

import yaml

from skinlesion import isic
from skinlesion.files import TAG, write_text
from skinlesion.metrics import operating_point_text

LICENCES = {"CC-BY-NC": "cc-by-nc-4.0", "CC-BY": "cc-by-4.0", "CC-0": "cc0-1.0"}  # most restrictive first
MIN_PER_CLASS = 20  # a subgroup is reported only with at least this many photos of each side
NOT_A_DEVICE = (
    "This is not a medical device: it is not approved or validated for diagnosis and must never replace a doctor."
)


def licence_id(licences):
    """The Hugging Face licence id of the data's most restrictive licence."""
    return next((hf for name, hf in LICENCES.items() if name in licences), "other")


def front_matter(meta, evaluation, name):
    """The card's YAML header: licence, library, tags, base model, datasets, metrics, model-index results."""
    results = [result_entry(name, "validation", meta["val_metrics"], meta.get("calibration"), "val_ece_after")]
    if evaluation:
        results.append(
            result_entry(
                name, "test", evaluation["metrics"], evaluation.get("calibration"), "ece_after", evaluation.get("ci95")
            )
        )
    header = dict(
        license=licence_id(meta.get("data", {}).get("licences", {})),
        library_name="timm",
        tags=[
            "image-classification",
            "dermatology",
            "skin-lesion",
            "isic-archive",
            meta["model_name"],
            "not-a-medical-device",
        ],
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
    out = []
    for factor, by_split in factors.items():
        splits = list(by_split)
        values = sorted({v for counts in by_split.values() for v in counts}, key=lambda v: (v == "unknown", v))
        rows = [[v] + [by_split[s].get(v, 0) for s in splits] for v in values]
        out.append(f"**{factor}**\n\n" + table([factor] + splits, rows))
    return "\n\n".join(out) or "No metadata columns for these factors: all unknown."


def absent(meta):
    """Photo types and populations the training data did not contain: where the model must not be trusted."""
    factors = meta.get("data", {}).get("factors", {})
    seen = {f: {v for counts in by_split.values() for v in counts if v != "unknown"} for f, by_split in factors.items()}
    gaps = [f"photo types other than {', '.join(sorted(seen.get('image type', set()))) or 'unknown ones'}"]
    skin = {"I", "II", "III", "IV", "V", "VI"} - seen.get("skin type", set())
    if skin:
        gaps.append(f"Fitzpatrick skin types {', '.join(sorted(skin))} (no photos, or not recorded)")
    bands = [band for _, _, band in isic.AGE_BANDS if band not in seen.get("age band", set())]
    if bands:
        gaps.append(f"ages {', '.join(bands)} (no photos, or not recorded)")
    return gaps


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
            f"Calibration: {cal['method']} scaling (a = {cal['a']:.3f}, b = {cal['b']:.3f}); validation "
            f"log-loss {cal['val_log_loss_before']:.3f} -> {cal['val_log_loss_after']:.3f}, ECE "
            f"{cal['val_ece_before']:.3f} -> {cal['val_ece_after']:.3f}."
        )
    if not evaluation:
        text.append("**Test**: not evaluated yet; run `python evaluate.py`, which adds its results here.")
        return "\n\n".join(text)
    rows = [
        [key, f"{evaluation['metrics'][key]:.3f}", f"{low:.3f}-{high:.3f}"]
        for key, (low, high) in evaluation["ci95"].items()
    ]
    text.append(
        f"**Test** ({evaluation['data_dir']}: {evaluation['n_images']}), by evaluate.py:\n\n"
        + table(["metric", "value", "95% CI"], rows)
    )
    calibration = evaluation.get("calibration") or {}
    if calibration:
        text.append(
            table(
                ["calibration on test", "before", "after"],
                [
                    [k, f"{calibration[k + '_before']:.3f}", f"{calibration[k + '_after']:.3f}"]
                    for k in ("ece", "brier")
                ],
            )
        )
    for factor, groups in evaluation.get("subgroups", {}).items():
        rows = [[g, r["photos"], r.get("roc_auc_text", r.get("note", ""))] for g, r in groups.items()]
        text.append(f"Test ROC-AUC by {factor}:\n\n" + table([factor, "photos", "ROC-AUC (95% CI)"], rows))
    return "\n\n".join(text)


def render(meta, name, evaluation=None):
    """The whole card as markdown."""
    data, settings = meta.get("data", {}), meta.get("settings", {})
    start = "ImageNet weights (timm/efficientnet_b0.ra_in1k)" if meta.get("imagenet") else "random weights"
    sides = ", ".join(
        f"{c} ({'malignant' if c in meta.get('malignant_classes', ['malignant']) else 'benign'})"
        for c in meta["classes"]
    )
    counts = table(["split"] + meta["classes"], [[s] + list(n.values()) for s, n in data.get("counts", {}).items()])
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
    lines += [
        f"> {NOT_A_DEVICE}",
        "## Model details",
        f"- Architecture: {meta['model_name']} (timm), started from {start}; recipe {settings.get('recipe')} "
        f"({', '.join(f'{k} {settings[k]}' for k in ('optimizer', 'lr', 'epochs') if k in settings)}); best epoch "
        f"{meta.get('epoch')}.",
        f"- Classes: {sides}; P(malignant) is the summed probability of the malignant ones.",
        f"- Input: {meta['image_size']} x {meta['image_size']} px centre crop ({meta['interpolation']}, crop_pct "
        f"{meta['crop_pct']}). Versions: {meta.get('versions')}. Date: {datetime.date.today()}.",
        "## Intended use",
        "Research and teaching: to study how such a classifier behaves on photos like those "
        "it was trained on, one lesion per photo, centred.",
        "**Out of scope:** diagnosis, triage or screening of patients; " + "; ".join(absent(meta)) + ".",
        "## Training data",
        f"From `{data.get('source')}` (label column `{data.get('label_column')}`). Photos per split and class:",
        counts,
        f"Licences: {data.get('licences')}. Attribution (most photos first): "
        f"{'; '.join(data.get('attributions', {}))}; the full list travels with the data (attribution.txt, "
        "licenses/).",
        f"Split: photos sharing {data.get('grouping')} stay in one split, so validation and test "
        "photos are not near-copies of training ones.",
        "## Evaluation",
        evaluation_section(meta, evaluation),
        "## Factors",
        "Whom and what the photos show, per split (unknown: not in the metadata).",
        factor_tables(data.get("factors", {})),
        "## Caveats and recommendations",
        caveats(meta, data),
    ]
    return "\n\n".join(lines) + "\n"


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
    trained_on = f"{photos} ISIC photos ({types or 'image type unknown'}); classes {', '.join(meta['classes'])}"
    if data.get("synthetic"):
        trained_on += " (SYNTHETIC demo drawings, not real lesions)"
    limits = [NOT_A_DEVICE] + [f"Not for {gap}." for gap in absent(meta)]
    return dict(
        trained_on=trained_on,
        how_well=how_well,
        intended_use="research and teaching, on photos like the training ones, one lesion per photo, centred",
        limits=limits,
    )
