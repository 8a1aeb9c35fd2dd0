"""The model card (Mitchell et al. 2019, in the Hugging Face format; items of the CLEAR Derm checklist): what the
model is, what it learned from (counts, image types, licences, attribution, how the split kept lesions and
patients apart), how well it does on validation and, once evaluate.py ran, on test, overall and for whom (sex,
age band, body site, skin type), where it must not be used, and its caveats. AItraining.py writes it beside
the model (skin_model.md), evaluate.py rewrites it with the test results, export_onnx.py carries its summary
into the ONNX file, and the web page shows that summary."""

import datetime

from skinlesion import dataset
from skinlesion.files import TAG, write_text
from skinlesion.metrics import operating_point_text
from skinlesion.model_index import front_matter

METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "f1": "F1", "roc_auc": "ROC-AUC", "ece": "ECE",
                "brier": "Brier score"}  # fmt: skip
MIN_PER_CLASS = 20  # a subgroup is reported only with at least this many photos of each side
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


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def factor_tables(factors):
    """A table per factor: its values' photos per split, unknown included."""
    found = [f"**{f}**\n\n" + table([f, *splits], rows) for f, (splits, rows) in dataset.factor_rows(factors).items()]
    return "\n\n".join(found) or "No metadata columns for these factors: all unknown."


def evaluation_section(meta, evaluation):
    """Validation results (what the threshold and calibration were chosen on) and, if run, the test results."""
    op, cal = meta.get("operating_point"), meta.get("calibration")
    chosen = "the split the best epoch, the calibration and the threshold were chosen on"
    text = [f"**Validation** ({chosen}): {validated(meta)}."]
    if op:
        text.append(f"Operating point: threshold {op['threshold']:.3f} on P(malignant); {operating_point_text(op)}.")
    if cal:
        text.append(
            f"Calibration: {cal['method'].replace('platt', 'Platt')} scaling (a = {cal['a']:.3f}, b = "
            f"{cal['b']:.3f}); validation log-loss {cal['val_log_loss_before']:.3f} -> "
            f"{cal['val_log_loss_after']:.3f}, ECE {cal['val_ece_before']:.3f} -> {cal['val_ece_after']:.3f}."
        )
    found = meta.get("familiarity")
    if found:
        text.append(
            f"Familiarity: a photo whose features lie further than {found['limit']:.2f} (Mahalanobis distance to the "
            f"nearest class mean of the training photos) is unfamiliar and gets no answer; {found['val_within']:.0%} "
            f"of the {found['n_val']} validation photos lie within."
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
    found = evaluation.get("familiarity")
    if found:
        text.append(
            f"Unfamiliar test photos: {found['n_unfamiliar']} of {found['n_photos']} ({found['share_unfamiliar']:.1%}) "
            f"lie beyond the familiarity limit chosen on validation, where {found['quantile']:.0%} of the photos lie "
            "within; predict.py and the page give them no answer (the metrics above include them)."
        )
    for factor, groups in evaluation.get("subgroups", {}).items():
        rows = [[g, r["photos"], r.get("text", "")] for g, r in groups.items()]
        text.append(f"Test ROC-AUC by {factor}:\n\n" + table([factor, "photos", "ROC-AUC (95% CI)"], rows))
    return "\n\n".join(text)


def render(meta, name, evaluation=None):
    """The whole card as markdown."""
    data, settings = meta.get("data", {}), meta.get("settings", {})
    start = "ImageNet weights (timm/efficientnet_b0.ra_in1k)" if meta.get("imagenet") else "random weights"
    architecture = meta.get("model_name", "efficientnet_b0")
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
        f"- Architecture: {architecture} (timm), started from {start}; recipe {settings.get('recipe')} "
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


def validated(meta):
    """'ROC-AUC 0.912 (95% CI 0.871-0.946)' on validation, or why it is not known."""
    m, ci = meta.get("val_metrics") or {}, meta.get("val_auc_ci95")
    if "roc_auc" not in m or not ci:
        return "ROC-AUC not recorded in the model file (no validation split, or an earlier version)"
    return f"ROC-AUC {m['roc_auc']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})"


def summary(meta, tested=None):
    """The card in four short texts, for the ONNX file and the page's 'About this model'."""
    data = meta.get("data", {})
    photos = sum(sum(counts.values()) for counts in data.get("counts", {}).values())
    types = ", ".join(v for v in data.get("factors", {}).get("image type", {}).get("train", {}) if v != "unknown")
    how_well = f"validation {validated(meta)}"
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
