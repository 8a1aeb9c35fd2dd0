"""The model card (Mitchell et al. 2019, in the Hugging Face format; items of the CLEAR Derm checklist): what the
model is, what it learned from (counts, image types, licences, attribution, how the split kept lesions and
patients apart), how well it does on validation and, once evaluate.py ran, on test, overall and for whom (sex,
age band, body site, skin type), where it must not be used, and its caveats. AItraining.py writes it beside
the model (skin_model.md), evaluate.py rewrites it with the test results, export_onnx.py carries its summary
into the ONNX file, and the web page shows that summary."""

import datetime
import json
import re

import yaml

from skinlesion import answer, dataset, familiarity, ledger, reading
from skinlesion.files import TAG, write_text
from skinlesion.messages import printable
from skinlesion.metrics import (
    held_share,
    interval_text,
    known_interval,
    operating_point_text,
    percent_range,
    types_text,
)

METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "f1": "F1", "roc_auc": "ROC-AUC", "ece": "ECE",
                "brier": "Brier score"}  # fmt: skip
MAX_CARD_BYTES = 50_000_000  # the largest model card read (with its evaluations embedded: a few hundred KB)
MIN_PER_CLASS = 20  # a subgroup is reported only with at least this many photos of each side
EMBEDDED = "<!-- evaluations, read back by evaluate.py: "  # the card's results as JSON, for the next evaluation
KEPT = (
    "data_dir",
    "name",
    "n_images",
    "metrics",
    "ci95",
    "at_chance",
    "calibration",
    "subgroups",
    "types",
    "familiarity",
    "photos",
    "warnings",
)
NOT_A_DEVICE = (
    "This is not a medical device: it is not approved or validated for diagnosis and must never replace a doctor."
)
MARKDOWN = re.compile(r"([\\`*\[\]~#!]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z]))")  # emphasis, code, links, headings
# (an underscore inside a word, as in lesion_id, is text to markdown: left as it is)
ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;"}  # HTML and table cells, as every renderer reads
LICENCES = {"CC-BY-NC": "cc-by-nc-4.0", "CC-BY": "cc-by-4.0", "CC-0": "cc0-1.0"}  # HF licence ids, strictest first
# the Hugging Face front matter's tags (front_matter adds the backbone)
TAGS = ["image-classification", "dermatology", "skin-lesion", "isic-archive", "not-a-medical-device"]


def markdown_text(value):
    """Any text from a data or model file (a class name, an attribution, a path) as markdown that shows it as it
    is, on one line: control characters escaped as messages.printable prints them, HTML and a table's | as entities,
    and every other character markdown would read (emphasis, code, links, headings) backslash-escaped."""
    text = MARKDOWN.sub(r"\\\1", printable(str(value)))
    return re.sub("[&<>|]", lambda found: ENTITIES[found.group()], text)


def markdown_code(value):
    """value as a code span (a path, a column name), or as escaped text where it holds a backtick."""
    text = printable(str(value))
    return markdown_text(text) if "`" in text else f"`{text}`"


def listed(names):
    """'a', 'a and b', 'a, b and c'."""
    names = [str(n) for n in names]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def counted(counts):
    """{name: number} as 'name number, name number' (in markdown)."""
    return ", ".join(f"{markdown_text(name)} {number}" for name, number in counts.items()) or "unknown"


def sides(meta, shown=markdown_text):
    """'benign and malignant', or the lesion types by side: 'nevus (benign); melanoma and bcc (malignant)'; each
    class name as shown gives it (markdown, or str for plain text)."""
    classes, malignant = meta["classes"], meta.get("malignant_classes", ["malignant"])
    if classes == ["benign", "malignant"]:
        return "benign and malignant"
    by_side = {side: [shown(c) for c in classes if (c in malignant) == (side == "malignant")] for side in dataset.SIDES}
    return "; ".join(f"{listed(names)} ({side})" for side, names in by_side.items())


def table(header, rows):
    """A markdown table; every cell escaped (markdown_text), so a name holding | or < stays in its cell."""
    lines = ["| " + " | ".join(map(markdown_text, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(markdown_text(c) for c in row) + " |" for row in rows])


def factor_tables(factors):
    """A table per factor: its values' photos per split, unknown included."""
    rows_by_factor = dataset.factor_rows(factors).items()
    found = [f"**{markdown_text(f)}**\n\n" + table([f, *splits], rows) for f, (splits, rows) in rows_by_factor]
    return "\n\n".join(found) or "No metadata columns for these factors: all unknown."


def evaluation_section(meta, evaluation, externals=None):
    """Validation results (what the threshold and calibration were chosen on) and, if run, the test results."""
    op, cal, (said, photos, where) = meta.get("operating_point"), meta.get("calibration"), chosen_on(meta)
    chosen = "the split the best epoch, the calibration and the threshold were chosen on"
    text = [f"**Validation** ({chosen}): {validated(meta)}."]
    if meta.get("folds"):  # every train and validation photo, predicted by the fold network that did not train on it
        chosen = f"{fold_text(meta['folds'])}; each photo predicted by the fold network that did not train on it, "
        chosen += f"n = {meta['folds']['photos']}: the calibration, the threshold and the familiarity limit"
        text = [f"**Out of fold** ({chosen} were chosen on these): {validated(meta)}."]
    if op:
        text.append(
            f"Operating point: threshold {op['threshold']:.3f} on P(malignant); {operating_point_text(op, photos)}."
        )
    if cal:
        text.append(calibration_text(cal, where, said))
    if meta.get("val_types"):
        text.append(f"Validation {types_text(meta['val_types'], type_names(meta))}.")
    found = meta.get("familiarity")
    if found:
        text.append(f"Familiarity: {familiarity.limit_text(found, photos)}.")
    if not evaluation:
        text.append("**Test**: not evaluated yet; run `python evaluate.py`, which adds its results here.")
    else:
        text.append(tested_section(meta, evaluation, f"**Test** ({markdown_code(evaluation['data_dir'])}"))
    for name, found in (externals or {}).items():
        title = f"**External validation: {markdown_text(name)}** ({markdown_code(found['data_dir'])}"
        text.append(tested_section(meta, found, title, f"External ({name})"))
    return "\n\n".join(text)


def photos_text(meta, evaluation):
    """An evaluation's photos beside the training photos: their image types and malignant share, or ''."""
    found = evaluation.get("photos")
    if not found:
        return ""
    trained = meta.get("data", {}).get("factors", {}).get("image type", {}).get("train", {})
    prior = meta.get("prior_malignant")
    share = f"{found['malignant_share']:.0%} malignant"
    if prior is not None:
        share += f" (training photos: {prior:.0%})"
    return (
        f"Photos: {found['n_photos']}, of image type {counted(found['image_types'])} (training photos: "
        f"{counted(trained)}); {share}."
    )


def calibration_text(cal, where="the validation split", said="validation"):
    """Which calibration the model keeps, and why (where: what it was fitted on; said: its figures' name)."""
    effect = (
        f"{said} log-loss {cal['val_log_loss_before']:.3f} -> {cal['val_log_loss_after']:.3f}, ECE "
        f"{cal['val_ece_before']:.3f} -> {cal['val_ece_after']:.3f}"
    )
    if cal["method"] == "none":
        return (
            "Calibration: none. Neither temperature nor Platt scaling lowered the cross-validated log-loss on "
            f"{where}, so P(malignant) is the model's own ({effect})."
        )
    return (
        f"Calibration: {cal['method'].replace('platt', 'Platt')} scaling of the class logits (a = {cal['a']:.3f}, "
        f"b = {cal['b']:.3f}), kept because it lowered the cross-validated log-loss on {where}; {effect}."
    )


def type_names(meta):
    """{class: its original label value} where known."""
    return dict(zip(meta["classes"], meta.get("class_names") or meta["classes"]))


def tested_section(meta, evaluation, title, split="Test"):
    """One evaluation's results (the test split's, or an external data set's): the metrics with intervals, the
    calibration, the types and the subgroups."""
    text = []
    rows = [
        [METRIC_NAMES.get(key, key), f"{evaluation['metrics'][key]:.3f}", interval_text(ci)]
        for key, ci in evaluation["ci95"].items()
    ]
    text.append(
        f"{title}: {counted(evaluation['n_images'])} photos), by evaluate.py, at the validation threshold:\n\n"
        + table(["metric", "value", "95% CI"], rows)
    )
    text += [photos_text(meta, evaluation)] if evaluation.get("photos") else []
    text += held_table(meta, evaluation["metrics"], split)
    text += [f"**Warning**: {markdown_text(warning)}." for warning in evaluation.get("warnings") or []]
    cal = evaluation.get("calibration") or {}
    rows = [[METRIC_NAMES[k], f"{cal[k + '_before']:.3f}", f"{cal[k + '_after']:.3f}"] for k in ("ece", "brier") if cal]
    if rows:
        text.append(table(["calibration on these photos", "before", "after"], rows))
    if cal.get("warning"):
        text.append(f"Calibration: {cal['warning']}.")
    if evaluation.get("types"):
        found = types_text(evaluation["types"], type_names(meta))
        text.append(found[0].upper() + found[1:] + ".")
    found = evaluation.get("familiarity")
    if found:
        text.append(
            f"Unfamiliar photos: {found['n_unfamiliar']} of {found['n_photos']} ({found['share_unfamiliar']:.1%}) "
            f"lie beyond the familiarity limit chosen on {chosen_on(meta)[2]}, where "
            f"{familiarity.within_text(found, chosen_on(meta)[1])}; "
            "predict.py and the page give them no answer (the metrics above include them)."
        )
    for factor, groups in evaluation.get("subgroups", {}).items():
        rows = [[g, r["photos"], r.get("text", "")] for g, r in groups.items()]
        text.append(f"{split} ROC-AUC by {factor}:\n\n" + table([factor, "photos", "ROC-AUC (95% CI)"], rows))
    return "\n\n".join(text)


def held_table(meta, figures, photos):
    """[a table] of the operating point's figures, or []: what the model stated (on validation, or out of fold)
    with its 95% interval, the figure on these photos, and the range as many of these photos show 95 times in 100
    at the stated value (metrics.held_share): held, or not. Model files without the stated counts: []."""
    op, rows = meta.get("operating_point") or {}, []
    for key, side, n_new in (
        ("sensitivity", "malignant", figures.get("tp", 0) + figures.get("fn", 0)),
        ("specificity", "benign", figures.get("tn", 0) + figures.get("fp", 0)),
    ):
        ci, n_stated = known_interval(op.get(f"{key}_ci95")), op.get(f"n_{side}")
        found = held_share(op[key], n_stated, figures[key], n_new) if ci and key in figures else None
        if found is None:
            continue
        held, shown = found
        rows.append([key, percent_range(op[key], ci), f"{figures[key]:.0%} of {n_new}", shown, "yes" if held else "NO"])
    if not rows:
        return []
    header = ["at the threshold", f"stated on {chosen_on(meta)[1]} [95% CI]", photos, "as many photos show", "held"]
    said = (
        "The operating point against these photos: a figure holds where it lies within what as many photos show 95 "
        "times in 100 at the stated value (its own noise and the stated photos' together)"
    )
    return [said + ":\n\n" + table(header, rows)]


def starting_weights(meta):
    """Where the training started: ImageNet weights from the hub (its id) or from a file (its name and SHA-256),
    or random weights. Model files from before the record say only whether ImageNet weights were loaded."""
    imagenet = meta.get("imagenet")
    if isinstance(imagenet, dict) and "file" in imagenet:
        return f"ImageNet weights from the file {markdown_text(imagenet['file'])} (SHA-256 {imagenet['sha256']})"
    if isinstance(imagenet, dict):
        return f"ImageNet weights ({markdown_text(imagenet['source'])})"
    if imagenet:
        return f"ImageNet weights (timm/{meta.get('model_name', 'efficientnet_b0')})"
    return "random weights"


def render(meta, name, evaluation=None, externals=None, sha256=None, exports=None):
    """The whole card as markdown; evaluation: the test split's results, externals: {name: results} of other
    data sets (external validation); sha256: the model file's, which the card shows so that a reader can compare
    it with the published one; exports: {file name: SHA-256} of the ONNX files export_onnx.py made from it."""
    data, settings = meta.get("data", {}), meta.get("settings", {})
    start, architecture = starting_weights(meta), markdown_text(meta.get("model_name", "efficientnet_b0"))
    kept = fold_text(meta["folds"]) if meta.get("folds") else f"best epoch {meta.get('epoch')}"
    lines = [
        f"---\n{front_matter(meta, evaluation, name, externals)}---",
        f"<!-- {TAG}; regenerated by AItraining.py and evaluate.py -->",
        f"# Model card: {markdown_text(name)}",
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
        f"({', '.join(f'{k} {settings[k]}' for k in ('optimizer', 'lr', 'epochs') if k in settings)}); {kept}.\n"
        f"- Classes: {sides(meta)}; P(malignant) is the summed probability of the malignant "
        f"ones.\n- Input: {meta['image_size']} x {meta['image_size']} px centre crop ({meta['interpolation']}, "
        f"crop_pct {meta['crop_pct']}). Versions: {counted(meta.get('versions', {}))}. Date: {datetime.date.today()}."
        f"\n- Model file: {markdown_text(name)}, SHA-256 {sha256 or 'not recorded'} (compare it with the published "
        f"one).{exported_text((exports or {}).items())}",
        "## Intended use",
        "Research and teaching: to study how such a classifier behaves on photos like those "
        "it was trained on, one lesion per photo, centred.",
        "**Out of scope:** diagnosis, triage or screening of patients; "
        + "; ".join(map(markdown_text, dataset.not_covered(data)))
        + ".",
        "## Training data",
        training_data(meta["classes"], data),
        "## Evaluation",
        evaluation_section(meta, evaluation, externals),
        "## Factors",
        "Whom and what the photos show, per split (unknown: not in the metadata).",
        factor_tables(data.get("factors", {})),
        "## Caveats and recommendations",
        caveats(meta, data, externals),
    ]
    return "\n\n".join(lines) + "\n"


def exported_text(exports):
    """The ONNX files made from the model file ((name, SHA-256) pairs), one line each (predict.py and the page
    name the file that ran and its SHA-256: one of these, or the model file's), or ''."""
    lines = [f"\n- Exported by export_onnx.py: {markdown_text(file)}, SHA-256 {sha256}." for file, sha256 in exports]
    return "".join(lines)


def training_data(classes, data):
    """Where the photos came from, how many per split and class, their licences and authors, how they were split."""
    counts = [[split] + list(n.values()) for split, n in data.get("counts", {}).items()]
    grouping = data.get("grouping", "")
    split = f"photos sharing {markdown_text(grouping)} stay in one split, so validation and test photos are not "
    split += "near-copies of training ones."
    if not grouping.startswith(("lesion_id", "patient_id")):
        split = "not by lesion or patient (no lesion_id or patient_id known): photos of one lesion may sit in two "
        split += "splits, so "
        split += "validation and test results may be optimistic."
    return "\n\n".join(
        [
            f"From {markdown_code(data.get('source'))} (label column "
            f"{markdown_code(data.get('label_column', 'unknown'))}). Photos per split and class:",
            table(["split"] + classes, counts) if counts else "unknown (no manifest.csv).",
            f"Licences: {counted(data.get('licences', {}))}. Attribution (most photos first): "
            f"{'; '.join(map(markdown_text, data.get('attributions', {}))) or 'unknown'}; the full list travels with "
            "the data (attribution.txt, licenses/).",
            f"Split: {split}",
        ]
    )


def caveats(meta, data, externals=None):
    external = "No external validation: test photos come from the same export."
    if externals:
        external = f"External validation on {listed(externals)}: see Evaluation."
    found = [
        f"P(malignant) is calibrated on {chosen_on(meta)[2]}: it reads as a chance only where malignant "
        f"lesions are about as common as there ({assumed_text(meta)}); predict.py --prevalence re-weights it.",
        external,
        *dataset.not_recorded(data),
    ]
    if data.get("synthetic"):
        found.insert(0, "Trained on SYNTHETIC drawings (make_demo_data.py): it knows nothing about real skin.")
    said = any(text.startswith("Skin type") for text in dataset.not_recorded(data))
    if "skin type" in data.get("factors", {}) and not said:
        found.append("Skin type is unknown for most photos in ISIC exports: performance on darker skin is not known.")
    return "\n".join(f"- {c}" for c in found)


def write_card(path, meta, name, evaluation=None, externals=None, model_sha256=None, exports=None):
    """The card, with its evaluations and the exports embedded as JSON (for evaluate.py and export_onnx.py: an
    external data set keeps the test section, and the reverse) when the model's SHA-256 is given."""
    text = render(meta, name, evaluation, externals, model_sha256, exports)
    if model_sha256:
        kept = dict(model_sha256=model_sha256, test=evaluation, externals=externals or {}, exports=exports or {})
        text += EMBEDDED + json.dumps(kept).replace(">", "\\u003e") + " -->\n"
    write_text(path, text, "model card")


def embedded(path, model_sha256):
    """What our card at path keeps for the same model file ({test, externals, exports}), else None: a card we did
    not write or that was changed since, or one of another model file."""
    if ledger.why_not_ours(path, "model card") is not None:  # only our own card, unchanged since we wrote it
        return None
    try:  # a regular file within the bound (it may have changed since the ledger looked), JSON that parses
        text = reading.read_bytes(path, MAX_CARD_BYTES).decode("utf-8", "replace")
        found = re.search(re.escape(EMBEDDED) + r"(.*) -->", text)
        kept = reading.parse_json(found.group(1), path) if found else {}
    except OSError:
        return None
    if not isinstance(kept, dict) or kept.get("model_sha256") != model_sha256:
        return None
    return kept


def earlier_evaluations(path, model_sha256):
    """(test results, {name: external results}) embedded in our card at path for the same model file, else
    (None, {})."""
    kept = embedded(path, model_sha256) or {}
    return kept.get("test"), kept.get("externals") or {}


def card_evaluation(result):
    """What the card keeps of evaluate.py's result."""
    return {key: result[key] for key in KEPT if key in result}


def assumed_text(meta):
    """'P assumes about 50% of photos are malignant, as in the training photos', or '' when not known."""
    prior = meta.get("prior_malignant")
    if prior is None:
        return "the share of malignant photos it assumes is not recorded in this model file"
    return f"P assumes about {prior:.0%} of photos are malignant, as in the training photos"


def validated(meta):
    """'ROC-AUC 0.912 (95% CI 0.871-0.946)' on validation, or why it is not known."""
    m, ci = meta.get("val_metrics") or {}, meta.get("val_auc_ci95")
    if "roc_auc" not in m or not ci:
        return "ROC-AUC not recorded in the model file (no validation split, or an earlier version)"
    return f"ROC-AUC {m['roc_auc']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})"


def summary(meta, tested=None, externals=None):
    """The card in four short texts, for the ONNX file and the page's 'About this model'; tested: the test
    results (test_results), externals: {name: results} of external data sets (as the card keeps
    them): their figures in words, and the test sensitivity and specificity at the threshold (PPV and NPV)."""
    data = meta.get("data", {})
    photos = sum((data.get("counts") or {}).get("train", {}).values())  # what it learned from, not all it was given
    if meta.get("folds"):  # the folds' networks (and a refit) learned from train plus validation
        photos = meta["folds"]["photos"]
    types = ", ".join(v for v in data.get("factors", {}).get("image type", {}).get("train", {}) if v != "unknown")
    how_well = f"{chosen_on(meta)[0]} {validated(meta)}"
    if meta.get("operating_point"):
        how_well += "; " + operating_point_text(meta["operating_point"], chosen_on(meta)[1])
    if meta.get("val_types"):
        how_well += "; validation " + types_text(meta["val_types"], type_names(meta))
    tested_words = answer.tested_text(answer.tested_figures(tested)) if tested else None
    if tested_words:
        how_well += "; " + tested_words
    trained_on = f"{photos or 'an unknown number of'} ISIC photos ({types or 'type unknown'}); classes: "
    trained_on += sides(meta, str)
    if data.get("synthetic"):
        trained_on += " (SYNTHETIC demo drawings, not real lesions)"
    limits = [NOT_A_DEVICE] + [f"Not for {gap}." for gap in dataset.not_covered(data)] + dataset.not_recorded(data)
    found = dict(
        trained_on=trained_on,
        how_well=how_well,
        intended_use="research and teaching, on photos like the training ones, one lesion per photo, centred",
        limits=limits,
        tested=tested_words,
    )
    if externals:
        found["externals"] = answer.external_texts(externals)
    if tested and "sensitivity" in tested and "specificity" in tested:
        found["test_point"] = dict(sensitivity=tested["sensitivity"][0], specificity=tested["specificity"][0])
    return found


def fold_text(found):
    """What a run with folds (a model file's meta["folds"]) deployed, in words (the card, the log)."""
    k, n = found["k"], found["photos"]
    if found["deployed"] == "refit":
        what = f"one network refit on all {n} photos for the {found['refit_epochs']} epochs the folds chose"
    else:
        what = f"the {k} fold networks averaged"
    return f"{k} folds of the {n} train and validation photos; deployed: {what}"


def chosen_on(meta):
    """How a model file names the predictions its calibration, threshold and familiarity limit were chosen on:
    (for a figure, the photos, where): the validation split's, or the folds' out-of-fold ones."""
    if not meta.get("folds"):
        return "validation", "validation photos", "the validation split"
    return "out-of-fold", "out-of-fold photos", "the out-of-fold predictions"


def licence_id(licences):
    """The Hugging Face licence id of the data's most restrictive licence."""
    return next((hf for name, hf in LICENCES.items() if name in licences), "other")


def front_matter(meta, evaluation, name, externals=None):
    """The card's YAML header: licence, library, tags, base model, datasets, metrics, model-index results."""
    results = [
        result_entry(name, "validation", meta.get("val_metrics") or {}, meta.get("calibration"), "val_ece_after")
    ]
    if evaluation:
        test = evaluation["metrics"], evaluation.get("calibration"), "ece_after", evaluation.get("ci95")
        results.append(result_entry(name, "test", *test))
    for data_name, found in (externals or {}).items():  # external validation: another data set
        entry = result_entry(
            name, "external", found["metrics"], found.get("calibration"), "ece_after", found.get("ci95")
        )
        entry["dataset"].update(type="external", name=f"External validation: {data_name}")
        results.append(entry)
    header = dict(
        license=licence_id(meta.get("data", {}).get("licences", {})),
        library_name="timm",
        tags=TAGS + [meta.get("model_name", "efficientnet_b0")],
        datasets=["ISIC Archive"],
        pipeline_tag="image-classification",
        metrics=["roc_auc", "sensitivity", "specificity", "expected_calibration_error"],
        **{"model-index": [dict(name=name, results=results)]},
    )
    imagenet = meta.get("imagenet")
    if isinstance(imagenet, dict) and "source" in imagenet:  # from the hub; a local file has no hub id
        header["base_model"] = imagenet["source"]
    return yaml.safe_dump(header, sort_keys=False, allow_unicode=True)


def result_entry(name, split, scores, calibration, ece_key, ci95=None):
    """One model-index result: ROC-AUC, sensitivity and specificity at the threshold (95% CIs in their names
    where known), ECE after calibration."""
    found = []
    for key, label in [("roc_auc", "ROC-AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity")]:
        if scores.get(key) is None:
            continue
        known = known_interval((ci95 or {}).get(key))  # none where evaluate.py ran with --n-bootstrap 0
        interval = f", 95% CI {known[0]:.3f}-{known[1]:.3f}" if known else ""
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


def test_results(evaluation):
    """{metric type: (value, name)} of evaluate.py's results (evaluation.json), named as the card's front matter
    names them, or None where they are not such results."""
    try:
        scores, calibration, ci95 = evaluation["metrics"], evaluation.get("calibration"), evaluation.get("ci95")
        entry = result_entry("", "test", scores, calibration, "ece_after", ci95)
    except (AttributeError, KeyError, TypeError, IndexError, ValueError):
        return None
    return {m["type"]: (m["value"], m["name"]) for m in entry["metrics"]} or None
