"""An exported ONNX file's self-check: the check inputs (sine patterns, the same on every machine, unlike any photo),
the record of the file's outputs on them that export_onnx.py stores (its metadata's self_check), and the check every
script makes of a file against it (load_onnx): on the inputs at once and the first alone (the batch size is dynamic),
every output within its tolerance of the record by its largest difference (a NaN never within), p_malignant what the
file's own logits give, and, for a model with a familiarity measure, at least one check input beyond its limit (a
distance wired to 0 is refused whatever the record says). What it cannot prove: that a graph which gives the record
on these inputs gives honest outputs on photos."""

import numpy as np

DRIFT = 1e-3  # how far (relative) the logits, map and distance may lie from the record: float32 on another machine


def inputs(size, n=3):
    """n deterministic float32 images [n, 3, size, size] (sine patterns of the normalised scale, the same on every
    machine, unlike any photo)."""
    rows, cols = np.mgrid[0:size, 0:size] / size
    waves = [[np.sin(2 * np.pi * (k + 1) * (rows * (c + 1) + cols * (k + 2)) + c) for c in range(3)] for k in range(n)]
    return (1.5 * np.asarray(waves)).astype(np.float32)


def record(outputs):
    """The self_check export_onnx.py stores: a file's outputs on inputs (by name), as lists."""
    arrays = {name: np.asarray(value, dtype=np.float64) for name, value in outputs.items()}
    return dict(inputs=len(arrays["logits"]), **{name: value.tolist() for name, value in arrays.items()})


def largest(values):
    """The largest of values (any shape), NaN where one is NaN (Python's max([0.1, nan]) is 0.1): never within
    a tolerance."""
    return float(np.max(values))


def drifts(found, stored, limit):
    """The largest difference of each output from the one stored: p_malignant's absolute; the logits' and the map's
    relative to each input's largest value (the logits' at least 1), the familiarity distance's relative to the
    larger of it and the limit."""
    scales = dict(
        logits=np.maximum(1.0, np.abs(stored["logits"]).max(axis=1, keepdims=True)),
        p_malignant=1.0,
        cam=np.maximum(1e-12, np.abs(stored["cam"]).max(axis=(1, 2), keepdims=True)),
    )
    if "familiarity_distance" in found:
        scales["familiarity_distance"] = np.maximum(max(limit or 0.0, 1e-12), np.abs(stored["familiarity_distance"]))
    return {name: largest(np.abs(found[name] - stored[name]) / scales[name]) for name in found}


def outputs_fault(found, own_p, stored, limit, tolerance):
    """What is wrong with a file's outputs (by name) on the first len(found) check inputs, or None: their shapes are
    those stored, its p_malignant is own_p (what its logits give through its calibration), and each output lies
    within tolerance (p_malignant) or DRIFT (the others, relative: drifts) of the one stored."""
    n = len(found["logits"])
    stored = {name: np.asarray(stored[name], dtype=np.float64)[:n] for name in found}
    if any(found[name].shape != stored[name].shape for name in found):
        shapes = {name: list(value.shape) for name, value in found.items()}
        return f"its self_check holds outputs for {len(stored['logits'])} inputs, the file gives {shapes}"
    off = largest(np.abs(found["p_malignant"] - own_p))
    if not off <= tolerance:
        return f"its p_malignant is not what its logits and calibration give (off by {off:.2g})"
    allowed = dict.fromkeys(found, DRIFT) | dict(p_malignant=tolerance)
    moved = [name for name, drift in drifts(found, stored, limit).items() if not drift <= allowed[name]]
    if moved:
        return f"its outputs on the check inputs are not those stored when it was exported ({', '.join(moved)})"
    return None


def fault(session, stored, size, names, p_of_logits, limit=None, tolerance=1e-4):
    """What is wrong with an ONNX file for size px photos (an onnxruntime session giving names) against its
    self_check stored, or None (the module's docstring says what is checked). p_of_logits: the calibrated
    P(malignant) of a batch of logits; limit: the familiarity limit of a model with that measure, else None."""
    left_out = [name for name in names if name not in stored]
    if left_out:
        return f"its self_check holds no {' or '.join(left_out)} (exported by an earlier version)"
    x = inputs(size, stored["inputs"])
    try:
        runs = [session.run(names, {session.get_inputs()[0].name: part}) for part in (x, x[:1])]
    except Exception as e:  # onnxruntime failing at run time: the file, the machine
        return f"onnxruntime failed on the model ({type(e).__name__}: {str(e)[:200]})"
    runs = [{name: np.asarray(value, dtype=np.float64) for name, value in zip(names, run)} for run in runs]
    if limit is not None and not (runs[0]["familiarity_distance"] > limit).any():
        return (
            f"its familiarity_distance puts none of the {len(x)} check inputs (patterns unlike any photo) beyond its "
            f"limit {limit:.4g}: it could not tell an unfamiliar photo"
        )
    faults = (outputs_fault(found, p_of_logits(found["logits"]), stored, limit, tolerance) for found in runs)
    return next(filter(None, faults), None)
