"""The ONNX file export_onnx.py writes: its metadata (model_file.KEYS, each value as JSON), how it is written and
read back checked as a .pth is (metadata, finite weights, the architecture, its input and outputs), and its
self-check: the check inputs (sine patterns, the same on every machine, unlike any photo), the record of the file's
outputs on them stored at export, and the check every script makes against it, on the inputs at once and the first
alone (the batch size is dynamic): every output within its tolerance of the record by its largest difference (a NaN
never within), p_malignant what the file's own logits give (the prediction maths, model.py's, passed in as
p_malignant(logits, meta)), and, with a familiarity measure, at least one check input beyond its limit. What it
cannot prove: that a graph which gives the record on these inputs gives honest outputs on photos."""

import json

import numpy as np

from skinlesion import backbone, familiarity, model_file, quantise, reading
from skinlesion.messages import UserError, printable

DRIFT = 1e-3  # how far (relative) the logits, map and distance may lie from the record: float32 on another machine


def output_names(meta):
    """An export's outputs, in order: ONNX_OUTPUTS, and the familiarity distance for a model with that measure."""
    outputs = model_file.ONNX_OUTPUTS
    return [*outputs, "familiarity_distance"] if meta.get("familiarity") else list(outputs)


# ---------------------------------------------------------------------------- writing one
def export_metadata(meta, **written):
    """The ONNX file's metadata, each value a JSON string: the keys of model_file.KEYS marked "copied" (the
    familiarity measure without its arrays, which are in the graph) and those export_onnx.py writes (written)."""
    copied = [name for name, key in model_file.KEYS.items() if key.onnx == "copied"]
    props = {key: value for key, value in meta.items() if key in copied}
    if meta.get("familiarity"):
        props["familiarity"] = {k: v for k, v in meta["familiarity"].items() if k not in familiarity.ARRAYS}
    props.update(written)
    return {key: json.dumps(value) for key, value in props.items()}


def save_export(program, path, metadata):
    """Write a torch.onnx program to path as one self-contained ONNX file (the weights inside) with metadata."""
    program.model.metadata_props.update(metadata)
    program.save(path, external_data=False)


def copy_metadata(tmp, full_path, own, result):
    """Give the int8 twin at tmp the full model's metadata (the quantiser adds keys of its own), its own self_check
    and its comparison (quantised)."""
    import onnx

    proto = onnx.load(tmp)
    del proto.metadata_props[:]
    for prop in onnx.load(full_path, load_external_data=False).metadata_props:
        value = json.dumps(own) if prop.key == "self_check" else prop.value
        proto.metadata_props.add(key=prop.key, value=value)
    proto.metadata_props.add(key="quantised", value=json.dumps(result))
    onnx.save(proto, tmp)


def cpu_session(path):
    """An onnxruntime session of the file at path, on the CPU."""
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------- reading one back
def onnx_fault(proto, session, meta):
    """What makes an ONNX file not one of our exports (weights, graph, input, outputs), or None."""
    from onnx import numpy_helper

    size, n = meta["image_size"], len(meta["classes"])
    for tensor in proto.graph.initializer:
        if not np.isfinite(numpy_helper.to_array(tensor).astype(float, copy=False)).all():
            return f"its weight {tensor.name} holds NaN or infinite values"
    network = meta.get("network")
    if network is None:
        return "its metadata does not say its network's shape (exported by an earlier version)"
    shapes = [list(t.dims) for t in proto.graph.initializer]
    convs = sum(node.op_type == "Conv" for node in proto.graph.node)
    if convs != network["convs"] or [n, network["features"]] not in shapes:
        name, wanted = (
            model_file.architecture(meta),
            f"{network['convs']} convolutions, a {network['features']}-wide classifier",
        )
        return f"its graph is not {name} with {n} classes ({wanted}; it has {convs} convolutions)"
    inputs = [(i.name, i.shape, i.type) for i in session.get_inputs()]
    if len(inputs) != 1 or inputs[0][1][1:] != [3, size, size] or inputs[0][2] != "tensor(float)":
        return f"it takes {inputs}, not one float32 image [batch, 3, {size}, {size}]"
    outputs = {o.name: o.shape[1:] for o in session.get_outputs()}
    side = backbone.cam_side(size, network["stride"])
    wanted = dict(zip(model_file.ONNX_OUTPUTS, [[n], [], [side, side]]))
    if meta.get("familiarity"):  # the Mahalanobis distance to the training photos (skinlesion/familiarity.py)
        wanted["familiarity_distance"] = []
    if outputs != wanted:
        return f"its outputs (shapes after the batch) are {outputs}, not {wanted}"
    return None


def read_onnx(path, p_malignant):
    """(onnxruntime session, meta, None) for a regular file written by export_onnx.py, checked as read_checkpoint
    checks a .pth (metadata, finite weights, the architecture, its input and outputs) and against its self_check
    (p_malignant(logits, meta): the calibrated P(malignant) its logits give); else (None, None, the error line). An
    int8 twin's verdict (quantised) is recomputed from its numbers (quantise.within_tolerance), never read."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:  # a regular file only, within the bound; weights in files of their own (external data) are never read
        data = reading.read_bytes(path, model_file.MAX_MODEL_BYTES)
    except OSError as e:
        return None, None, f"{model_file.unreadable_text(path, e)}; export one with export_onnx.py"
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:  # onnx's own errors, whatever they are
        why = f"is not a readable ONNX model ({type(e).__name__}); export one with export_onnx.py"
        return None, None, f"{printable(path)} {why}"
    if any(uses_external_data(tensor) for tensor in proto.graph.initializer):
        why = "keeps its weights in files of their own (external data); export_onnx.py writes one self-contained file"
        return None, None, f"{printable(path)} is refused: it {why}"
    return checked_onnx(path, data, proto, p_malignant)


def checked_onnx(path, data, proto, p_malignant):
    """read_onnx's (session, meta, None) or (None, None, the error line) for the ONNX file read from path as data
    (bytes) and parsed as proto."""
    import onnxruntime as ort

    try:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        session = ort.InferenceSession(data, providers=providers)
    except Exception as e:  # onnxruntime's own errors, whatever they are
        why = f"is not a readable ONNX model ({type(e).__name__}); export one with export_onnx.py"
        return None, None, f"{printable(path)} {why}"
    keys = [p.key for p in proto.metadata_props]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    try:
        meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
        fault = twice and f"its metadata holds {', '.join(twice)} more than once"
    except RecursionError:
        fault = "its metadata is JSON nested too deeply to read"
    except ValueError as e:
        fault = f"its metadata is not valid JSON ({printable(str(e))})"
    fault = fault or model_file.meta_fault(meta) or onnx_fault(proto, session, meta)
    fault = fault or model_file.meta_fault(meta, "onnx") or model_file.unfinished_fault(meta)
    fault = fault or self_check_fault(session, meta, p_malignant)
    if fault:
        return None, None, f"{printable(path)} is refused: {fault}; export the model again with export_onnx.py"
    if "quantised" in meta:
        verdict = quantise.within_tolerance(meta["quantised"], bool(meta.get("familiarity")))
        meta["quantised"] = dict(meta["quantised"], within_tolerance=verdict)
    return session, meta, None


def load_onnx(path, p_malignant):
    """(onnxruntime session, meta) for a file written by export_onnx.py, checked (read_onnx); UserError with one
    line otherwise."""
    model_file.check_model_file(path, "export one with 'python export_onnx.py'")
    session, meta, error = read_onnx(path, p_malignant)
    if error:
        raise UserError(error)
    return session, meta


# ---------------------------------------------------------------------------- its self-check
def check_inputs(size, n=3):
    """n deterministic float32 images [n, 3, size, size] (sine patterns of the normalised scale, the same on every
    machine, unlike any photo)."""
    rows, cols = np.mgrid[0:size, 0:size] / size
    waves = [[np.sin(2 * np.pi * (k + 1) * (rows * (c + 1) + cols * (k + 2)) + c) for c in range(3)] for k in range(n)]
    return (1.5 * np.asarray(waves)).astype(np.float32)


def self_check_record(outputs):
    """The self_check export_onnx.py stores: a file's outputs on check_inputs (by name), as lists."""
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


def session_fault(session, stored, size, names, p_of_logits, limit=None, tolerance=1e-4):
    """What is wrong with an ONNX file for size px photos (an onnxruntime session giving names) against its
    self_check stored, or None (the module's docstring says what is checked). p_of_logits: the calibrated
    P(malignant) of a batch of logits; limit: the familiarity limit of a model with that measure, else None."""
    left_out = [name for name in names if name not in stored]
    if left_out:
        return f"its self_check holds no {' or '.join(left_out)} (exported by an earlier version)"
    x = check_inputs(size, stored["inputs"])
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


def self_check_fault(session, meta, p_malignant, tolerance=1e-4):
    """What is wrong with an ONNX file's outputs on the check inputs against those stored when it was exported (its
    meta's self_check), or None; p_malignant(logits, meta): what the file's P should be for its own logits."""
    limit = (meta.get("familiarity") or {}).get("limit")

    def own_p(logits):  # what the file's P should be: its logits through its calibration
        return p_malignant(logits, meta)

    stored, size = meta["self_check"], meta["image_size"]
    return session_fault(session, stored, size, output_names(meta), own_p, limit, tolerance)
