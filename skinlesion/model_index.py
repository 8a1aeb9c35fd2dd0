"""The model card's Hugging Face front matter (YAML): the data's licence, the library, tags, the base model when
ImageNet weights were used, datasets, metrics, and the model-index results (validation from AItraining.py, test
from evaluate.py); and the test results as the card names them (export_onnx.py carries them to the page)."""

import yaml

from skinlesion.metrics import known_interval

LICENCES = {"CC-BY-NC": "cc-by-nc-4.0", "CC-BY": "cc-by-4.0", "CC-0": "cc0-1.0"}  # most restrictive first
TAGS = ["image-classification", "dermatology", "skin-lesion", "isic-archive", "not-a-medical-device"]


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
