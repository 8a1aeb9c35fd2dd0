"""The page's smaller model: onnxruntime's static int8 quantisation of an exported ONNX file, and how far its answers
stay from the full model's. Only the convolutions are quantised, and not the stem or the depthwise ones (per
channel, QDQ, activation ranges from the 99.999th percentile on validation photos: on the real sample with Lite0
these choices moved the largest P difference from 0.87 to 0.24); the classifier, the calibration, the evidence map
and the familiarity measure stay float, so P(malignant) moves only as far as the features do. The comparison on
labelled validation photos decides whether the page may use it: no label may change outside the borderline band,
and its ROC-AUC may not fall by more than MAX_AUC_DROP."""

import os

import numpy as np

MAX_AUC_DROP = 0.005  # the int8 model's ROC-AUC may be at most this much below the full model's
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


def p_malignant(session, images, batch=16):
    """The file's p_malignant for images, batch by batch."""
    parts = [session.run(["p_malignant"], {"image": images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(parts).astype(np.float64)


def comparison(p_full, p_int8, y, threshold, band):
    """How far the int8 model's P(malignant) lies from the full model's on the same photos (y: 1 malignant, 0
    benign, or None): the largest difference, the labels that change (and those whose full-model P lay outside
    the borderline band), each ROC-AUC, and whether the page may use it (within_tolerance)."""
    from skinlesion import numbers

    changed = (p_full >= threshold) != (p_int8 >= threshold)
    outside = changed & (np.abs(p_full - threshold) >= band)
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
        result.update(roc_auc_full=float(numbers.roc_auc(y, p_full)), roc_auc_int8=float(numbers.roc_auc(y, p_int8)))
    auc_kept = result["roc_auc_full"] is not None and result["roc_auc_int8"] >= result["roc_auc_full"] - MAX_AUC_DROP
    result["within_tolerance"] = bool(auc_kept and result["label_changes_outside_band"] == 0)
    return result


def comparison_text(result):
    """One line on the int8 model against the full one, as export_onnx.py prints it and the page shows it."""
    aucs = "ROC-AUC not measured (no labelled photos of both sides)"
    if result["roc_auc_full"] is not None:
        aucs = f"ROC-AUC {result['roc_auc_int8']:.3f} against {result['roc_auc_full']:.3f}"
    verdict = (
        "within tolerance" if result["within_tolerance"] else "NOT within tolerance: the page keeps the full model"
    )
    return (
        f"on {result['photos']} validation photos its P(malignant) differs by at most "
        f"{result['max_p_difference']:.4f}, {result['label_changes']} labels change "
        f"({result['label_changes_outside_band']} outside the borderline band), {aucs}: {verdict}"
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
