"""The page's smaller model: onnxruntime's static int8 quantisation of an exported ONNX file, and how far its answers
stay from the full model's. Only the convolutions are quantised, and not the stem or the depthwise ones (per
channel, QDQ, activation ranges from the 99.999th percentile on validation photos); the classifier, the
calibration, the evidence map and the familiarity measure stay float, so P(malignant) moves only as far as the
features do. The comparison on labelled validation photos decides whether the page may use it (within_tolerance,
recomputed wherever the twin is loaded: its stored verdict is never read): no label may change outside the
borderline band, its ROC-AUC may not fall by more than MAX_AUC_DROP, and no photo may change its familiar/unfamiliar
decision unless its full-model distance lies within FAMILIARITY_BAND of the limit, the limit's own uncertainty
(why, and what was measured: docs/measurements.md, "The int8 twin")."""

import os

import numpy as np

from skinlesion import answer, familiarity

MAX_AUC_DROP = 0.005  # the int8 model's ROC-AUC may be at most this much below the full model's
FAMILIARITY_BAND = 0.05  # a photo within this share of the limit (|distance - limit| <= 0.05 x limit) may flip
CALIBRATION_PHOTOS = 64  # at most this many validation photos set the activations' int8 ranges


def quantised_path(path):
    """skin_model.onnx -> skin_model.int8.onnx: where export_onnx.py writes the int8 twin of an ONNX file."""
    root, ext = os.path.splitext(path)
    return f"{root}.int8{ext or '.onnx'}"


def quantise(full_path, out_path, images):
    """Write the int8 twin of the ONNX file at full_path to out_path (its metadata kept), its activation ranges
    calibrated on images (n, 3, size, size) float32, one photo at a time."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    step = max(1, len(images) // CALIBRATION_PHOTOS)
    chosen = images[::step][:CALIBRATION_PHOTOS]

    class Photos(CalibrationDataReader):
        def __init__(self):
            self.left = iter(chosen)

        def get_next(self):
            x = next(self.left, None)
            if x is None:
                return None
            return {"image": x[None]}

    with tempfile.TemporaryDirectory() as work:
        prepared = os.path.join(work, "prepared.onnx")
        quant_pre_process(full_path, prepared, skip_symbolic_shape=True)
        convs = [node for node in onnx.load(prepared).graph.node if node.op_type == "Conv"]
        depthwise = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
        quantize_static(
            prepared,
            out_path,
            Photos(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=[convs[0].name, *depthwise],  # the stem and the depthwise convolutions stay float
            calibrate_method=CalibrationMethod.Percentile,  # a few extreme activations do not set the int8 range
        )


def outputs(session, images, names, batch=16):
    """The file's outputs names for images, batch by batch, each float64 (n,)."""
    parts = [session.run(names, {"image": images[i : i + batch]}) for i in range(0, len(images), batch)]
    return [np.concatenate([part[k] for part in parts]).astype(np.float64) for k in range(len(names))]


def p_malignant(session, images, batch=16):
    """The file's p_malignant for images, batch by batch."""
    return outputs(session, images, ["p_malignant"], batch)[0]


def familiarity_flips(d_full, d_int8, limit, band=FAMILIARITY_BAND):
    """(photos familiar to the full model and unfamiliar to the twin, the reverse, those of either whose full-model
    distance lies further than band x limit from the limit): as familiarity.unfamiliar decides, a NaN unfamiliar
    (and never within the band)."""
    familiar_full, familiar_int8 = ~familiarity.is_unfamiliar(d_full, limit), ~familiarity.is_unfamiliar(d_int8, limit)
    flipped = familiar_full != familiar_int8
    near = np.abs(d_full - limit) <= band * limit
    return (
        int((familiar_full & ~familiar_int8).sum()),
        int((~familiar_full & familiar_int8).sum()),
        int((flipped & ~near).sum()),
    )


def largest_finite(values):
    """The largest finite value, or None where there is none."""
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else None


def comparison(p_full, p_int8, y, threshold, band, distances=None, limit=None):
    """How far the int8 model's P(malignant) lies from the full model's on the same photos (y: 1 malignant, 0
    benign, or None): the largest difference, the labels that change (and those whose full-model P lay outside
    the borderline band), each ROC-AUC; for a model with a familiarity measure (distances: the full model's and
    the twin's familiarity distances, limit: the model's), the photos whose familiar/unfamiliar decision flips
    each way (and those outside FAMILIARITY_BAND); and whether the page may use it (the rule: within_tolerance)."""
    from skinlesion import metrics

    changed = (p_full >= threshold) != (p_int8 >= threshold)
    outside = changed & ~answer.is_borderline(p_full, threshold, band)
    result = dict(
        photos=len(p_full),
        max_p_difference=float(np.abs(p_full - p_int8).max()),
        label_changes=int(changed.sum()),
        label_changes_outside_band=int(outside.sum()),
        roc_auc_full=None,
        roc_auc_int8=None,
        max_auc_drop=MAX_AUC_DROP,
    )
    if y is not None and 0 < np.sum(y) < len(y):
        result.update(roc_auc_full=float(metrics.roc_auc(y, p_full)), roc_auc_int8=float(metrics.roc_auc(y, p_int8)))
    if distances is not None:
        d_full, d_int8 = (np.asarray(d, dtype=np.float64) for d in distances)
        to_unfamiliar, to_familiar, flips_outside = familiarity_flips(d_full, d_int8, limit)
        result.update(
            familiar_to_unfamiliar=to_unfamiliar,
            unfamiliar_to_familiar=to_familiar,
            familiarity_flips_outside_band=flips_outside,
            familiarity_band=FAMILIARITY_BAND,
            max_distance_change=largest_finite(np.abs(d_full - d_int8) / max(limit, 1e-12)),
        )
    result["within_tolerance"] = within_tolerance(result, distances is not None)
    return result


def within_tolerance(result, familiar):
    """Whether the page may run the twin, recomputed from its comparison's numbers (never from its stored verdict):
    both ROC-AUCs measured and the twin's at most MAX_AUC_DROP below the full model's, no label changed outside the
    borderline band, and, for a model with a familiarity measure (familiar), its flips counted (with a band no
    wider than FAMILIARITY_BAND) and none outside the band."""
    full, int8 = result["roc_auc_full"], result["roc_auc_int8"]
    if full is None or int8 is None or not int8 >= full - MAX_AUC_DROP:
        return False
    if result["label_changes_outside_band"] != 0:
        return False
    if not familiar:
        return True
    counted = "familiarity_flips_outside_band" in result and result.get("familiarity_band", 1) <= FAMILIARITY_BAND
    return counted and result["familiarity_flips_outside_band"] == 0


def comparison_text(result):
    """One line on the int8 model against the full one, as export_onnx.py prints it and the page shows it."""
    aucs = "ROC-AUC not measured (no labelled photos of both sides)"
    if result["roc_auc_full"] is not None:
        aucs = f"ROC-AUC {result['roc_auc_int8']:.3f} against {result['roc_auc_full']:.3f}"
    flips = ""
    if "familiar_to_unfamiliar" in result:
        moved = result["max_distance_change"]
        moved_text = "" if moved is None else f"; distances move by at most {moved:.1%} of it"
        flips = (
            f", {result['familiar_to_unfamiliar']} photos turn unfamiliar and {result['unfamiliar_to_familiar']} "
            f"familiar ({result['familiarity_flips_outside_band']} further than "
            f"{result['familiarity_band']:.0%} of the limit from it{moved_text})"
        )
    verdict = (
        "within tolerance" if result["within_tolerance"] else "NOT within tolerance: the page keeps the full model"
    )
    return (
        f"on {result['photos']} validation photos its P(malignant) differs by at most "
        f"{result['max_p_difference']:.4f}, {result['label_changes']} labels change "
        f"({result['label_changes_outside_band']} outside the borderline band){flips}, {aucs}: {verdict}"
    )


def seconds_per_photo(session, images, repeats=3):
    """Median seconds onnxruntime takes for one photo (after one warm-up run)."""
    import time

    one = images[:1]
    session.run(["p_malignant"], {"image": one})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(["p_malignant"], {"image": one})
        times.append(time.perf_counter() - start)
    return float(np.median(times))
