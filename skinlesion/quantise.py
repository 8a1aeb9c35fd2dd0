"""The page's smaller model: the exported ONNX file with its weights stored small and turned back to float32 in
the graph (weight-only: activations stay float32): the deepest layers' weights int8 per output channel
(DequantizeLinear, scale = max|w| / 127 a channel), the others float16 (Cast), as many int8 as smallest_within
finds, each rounded layer's bias corrected for the mean shift its rounding makes on the validation photos; the
familiarity basis int8 per column, without its columns at the floor (docs/measurements.md, "The int8 twin"). The
page may use it only within tolerance on labelled validation photos (within_tolerance, recomputed wherever the
twin is loaded, never its stored verdict): P within MAX_P_DIFFERENCE of the full model's on every photo, no label
change outside the borderline band, no familiarity flip, ROC-AUC at most MAX_AUC_DROP below."""

import os
import re

import numpy as np

from skinlesion import answer, familiarity

MAX_P_DIFFERENCE = 0.01  # the twin's P(malignant) may differ from the full model's by at most this, on every photo
MAX_AUC_DROP = 0.005  # the int8 model's ROC-AUC may be at most this much below the full model's
SEARCH_SHARE = 0.8  # export_onnx.py chooses the smallest twin whose P differs by at most this share of the maximum
LAYER_WEIGHTS = {"Conv": 1, "Gemm": 1}  # the layers whose weight (their input of this index) is stored small
MEASURE_MATRICES = ("basis", "whitening")  # the familiarity measure's large matrices, by their name in the graph
STORED = ("int8", "float16", "float32")  # how a weight may be stored: int8 per channel, float16, or as it is
MEMBER = re.compile(r"members\.\d+\.")  # an ensemble member's part of a weight's name (ensemble.py)


def quantised_path(path):
    """skin_model.onnx -> skin_model.int8.onnx: where export_onnx.py writes the int8 twin of an ONNX file."""
    root, ext = os.path.splitext(path)
    return f"{root}.int8{ext or '.onnx'}"


def int8_per_channel(weight, axis):
    """(int8 values, float32 scales) of a float weight, symmetric per channel along axis: scale = max|w| / 127 over
    the channel (1 for a channel of zeros), values round(w / scale); weight ~ values x scale."""
    weight = np.asarray(weight, dtype=np.float32)
    others = tuple(i for i in range(weight.ndim) if i != axis)
    scale = np.abs(weight).max(axis=others) / 127
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    values = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    return values, scale


def layer_weights(graph):
    """[(initializer name, its output channel axis)] of a graph's layer weights, in the graph's order: each Conv's
    and Gemm's weight (axis 0; a Gemm without transB: 1)."""
    from onnx import helper

    found = []
    for node in graph.node:
        if node.op_type in LAYER_WEIGHTS:
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            axis = 1 if node.op_type == "Gemm" and not attributes.get("transB", 0) else 0
            found.append((node.input[LAYER_WEIGHTS[node.op_type]], axis))
    return found


def depths(graph):
    """The layers' depths in the network, shallowest first: the layer weights' names without an ensemble member's
    number (ensemble.py: members.<i>.), so that every member's layer at one depth is one."""
    return list(dict.fromkeys(MEMBER.sub("", name) for name, _ in layer_weights(graph)))


def small_weights(graph, int8_depths, measure="int8", rest="float16"):
    """{initializer name: (how it is stored, its channel axis)}: the layer weights of the deepest int8_depths depths
    int8, the others float16 (the shallow layers move P(malignant) the most: docs/measurements.md); the
    familiarity matrices (axis 1: per column) as measure says (one of STORED; float32: left as they are)."""
    deep = set(depths(graph)[::-1][:int8_depths])
    found = {name: ("int8" if MEMBER.sub("", name) in deep else rest, axis) for name, axis in layer_weights(graph)}
    found.update((name, (measure, 1)) for name in MEASURE_MATRICES)
    return {name: how for name, how in found.items() if how[0] != "float32"}


def stored_small(initializer, how, axis):
    """(new initializers, the node that turns them back into the float32 tensor of initializer's name): int8 values
    and their scales through DequantizeLinear on axis, or float16 through Cast."""
    from onnx import TensorProto, helper, numpy_helper

    name, weight = initializer.name, numpy_helper.to_array(initializer)
    if how == "float16":
        half = numpy_helper.from_array(weight.astype(np.float16), f"{name}.float16")
        return [half], helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT, name=f"{name}.cast")
    values, scale = int8_per_channel(weight, axis)
    tensors = [numpy_helper.from_array(values, f"{name}.int8"), numpy_helper.from_array(scale, f"{name}.scale")]
    node = helper.make_node("DequantizeLinear", [t.name for t in tensors], [name], axis=axis, name=f"{name}.dequantise")
    return tensors, node


def as_stored(weight, how, axis):
    """The float32 weight the twin's graph computes with, where weight is stored as how says (stored_small)."""
    if how == "float16":
        return weight.astype(np.float16).astype(np.float32)
    values, scale = int8_per_channel(weight, axis)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return values * scale.reshape(shape)


def layer_input_means(path, images, batch=16):
    """{layer weight's name: the mean of that Conv's or Gemm's input per input channel, over the photos and their
    pixels}: the full model's graph at path run on images with the layers' inputs as extra outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    proto = onnx.load(path)
    layers = {n.input[LAYER_WEIGHTS[n.op_type]]: n.input[0] for n in proto.graph.node if n.op_type in LAYER_WEIGHTS}
    inputs = list(dict.fromkeys(layers.values()))
    known = {output.name for output in proto.graph.output}
    extra = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in inputs if name not in known]
    proto.graph.output.extend(extra)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    sums = dict.fromkeys(inputs, 0.0)
    for start in range(0, len(images), batch):
        for name, values in zip(inputs, session.run(inputs, {"image": images[start : start + batch]})):
            per_photo = values.reshape(values.shape[0], values.shape[1], -1).mean(axis=2, dtype=np.float64)
            sums[name] = sums[name] + per_photo.sum(axis=0)
    return {weight: sums[name] / len(images) for weight, name in layers.items()}


def output_shift(node, change, mean):
    """How far a layer's output moves per output channel, on average, when its weight changes by change (the
    rounding: as stored less as it was) and its input has this mean per input channel: change . mean (a grouped
    Conv: within each group; a Gemm: times alpha, in units of its bias, which it multiplies by beta)."""
    from onnx import helper

    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        moved = change @ mean if attributes.get("transB", 0) else mean @ change
        return attributes.get("alpha", 1.0) * moved / attributes.get("beta", 1.0)
    groups, outputs_count, per_group = attributes.get("group", 1), change.shape[0], change.shape[1]
    summed = change.reshape(groups, outputs_count // groups, per_group, -1).sum(axis=3)
    return np.einsum("goi,gi->go", summed, mean.reshape(groups, per_group)).reshape(outputs_count)


def corrected_biases(graph, plan, means):
    """Bias correction (Nagel et al. 2019, empirical): from each layer's bias, subtract the shift of its output that
    storing its weight as plan says makes on its input's mean (means: layer_input_means; output_shift), so that the
    layer's output keeps its mean per channel; a bias added (float32) where the layer has none."""
    from onnx import numpy_helper

    tensors = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type in LAYER_WEIGHTS]:
        name = node.input[LAYER_WEIGHTS[node.op_type]]
        if name not in plan or name not in means:
            continue
        weight = numpy_helper.to_array(tensors[name])
        change = as_stored(weight, *plan[name]).astype(np.float64) - weight
        shift = output_shift(node, change, means[name])
        if len(node.input) > 2 and node.input[2]:
            bias = tensors[node.input[2]]
            values = numpy_helper.to_array(bias)
            bias.CopyFrom(numpy_helper.from_array((values - shift.reshape(values.shape)).astype(np.float32), bias.name))
        else:
            added = numpy_helper.from_array((-shift).astype(np.float32), f"{name}.bias")
            graph.initializer.append(added)
            del node.input[2:]
            node.input.append(added.name)


def at_the_floor(graph, floor):
    """The familiarity basis's columns (by index) whose precision lies at the floor (within 1e-6 of it, relative):
    a fit keeps columns past its photos' directions whose |W_i|^2 is rounding noise, and they change no squared
    distance by more than 1e-6 floor |x|^2, so the twin leaves them out. None without a floor."""
    from onnx import numpy_helper

    tensors = {t.name: t for t in graph.initializer if t.name in ("basis", "precisions")}
    if not floor or len(tensors) < 2:
        return None
    return np.flatnonzero(numpy_helper.to_array(tensors["precisions"]) >= float(floor) * (1 - 1e-6))


def without_columns(graph, columns):
    """Leave out the basis's columns (and their precisions) at the floor (at_the_floor); the tensors' recorded
    shapes go (onnxruntime infers them again)."""
    from onnx import numpy_helper

    for tensor in graph.initializer:
        if tensor.name in ("basis", "precisions"):
            axis = 1 if tensor.name == "basis" else 0
            kept = np.delete(numpy_helper.to_array(tensor), columns, axis=axis)
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(kept), tensor.name))
    del graph.value_info[:]


def quantise(full_path, out_path, int8_depths, measure="int8", rest="float16", floor=None, means=None):
    """Write the twin of the ONNX file at full_path to out_path (its metadata kept): each float32 weight that
    small_weights names (int8_depths, measure, rest: its) stored small and turned back to float32 in the graph, the
    rest as it was; with the layers' input means (layer_input_means), their biases corrected for the rounding
    (corrected_biases); with the familiarity measure's floor, the basis's columns at the floor left out (exact)."""
    import onnx

    proto = onnx.load(full_path)
    graph, plan = proto.graph, small_weights(proto.graph, int8_depths, measure, rest)
    columns = at_the_floor(graph, floor)
    if columns is not None and len(columns):
        without_columns(graph, columns)
    if means:
        corrected_biases(graph, plan, means)
    kept, added, nodes = [], [], []
    for initializer in graph.initializer:
        if initializer.name in plan and initializer.data_type == onnx.TensorProto.FLOAT:
            tensors, node = stored_small(initializer, *plan[initializer.name])
            added += tensors
            nodes.append(node)
        else:
            kept.append(initializer)
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    rest_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest_nodes)  # before every node that reads them: the graph stays in order
    onnx.save(proto, out_path)


def smallest_within(depth_count, judge):
    """(int8 depths, comparison) of the smallest twin that holds (holds): judge(k) compares the twin with the deepest
    k of depth_count depths int8 (the others float16). All of them int8 where that holds; else the largest k found
    by halving between 0 and depth_count; 0 (float16 weights) where nothing holds, with its comparison (which the
    page's rule judges as any other)."""
    found = judge(depth_count)
    if holds(found):
        return depth_count, found
    low, low_result, high = 0, judge(0), depth_count
    if not holds(low_result):
        return 0, low_result
    while high - low > 1:
        middle = (low + high) // 2
        found = judge(middle)
        if holds(found):
            low, low_result = middle, found
        else:
            high = middle
    return low, low_result


def holds(result):
    """Whether smallest_within may choose a twin of this comparison: within tolerance, its P(malignant) within
    SEARCH_SHARE of MAX_P_DIFFERENCE (the candidates are compared on the same photos that judge the one chosen)."""
    return result["within_tolerance"] and result["max_p_difference"] <= SEARCH_SHARE * MAX_P_DIFFERENCE


def weights_text(result):
    """How the twin stores its layers' weights, from its comparison: 'int8 weights', 'float16 weights', or 'int8
    weights in its deepest 10 of 50 layers, float16 in the others' (a twin before issue 31: 'int8')."""
    k, n = result.get("int8_depths"), result.get("depths")
    if k is None or n is None:
        return "int8"
    if k == n:
        return "int8 weights"
    if k == 0:
        return "float16 weights"
    return f"int8 weights in its deepest {k} of {n} layers, float16 in the others"


def outputs(session, images, names, batch=16):
    """The file's outputs names for images, batch by batch, each float64 (n,)."""
    parts = [session.run(names, {"image": images[i : i + batch]}) for i in range(0, len(images), batch)]
    return [np.concatenate([part[k] for part in parts]).astype(np.float64) for k in range(len(names))]


def p_malignant(session, images, batch=16):
    """The file's p_malignant for images, batch by batch."""
    return outputs(session, images, ["p_malignant"], batch)[0]


def familiarity_flips(d_full, d_int8, limit, band=0.05):
    """(photos familiar to the full model and unfamiliar to the twin, the reverse, those of either whose full-model
    distance lies further than band x limit from the limit): as familiarity.unfamiliar decides, a NaN unfamiliar
    (and never within the band). The page's rule allows no flip at all; tools/measure_familiarity.py counts those
    near the limit apart."""
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
    """How far the twin's P(malignant) lies from the full model's on the same photos (y: 1 malignant, 0 benign, or
    None): the largest and the mean difference, the labels that change (and those whose full-model P lay outside
    the borderline band), each ROC-AUC; for a model with a familiarity measure (distances: the full model's and the
    twin's familiarity distances, limit: the model's), the photos whose familiar/unfamiliar decision flips each way
    and the largest distance change relative to the limit; and whether the page may use it (within_tolerance)."""
    from skinlesion import metrics

    changed = (p_full >= threshold) != (p_int8 >= threshold)
    outside = changed & ~answer.is_borderline(p_full, threshold, band)
    difference = np.abs(p_full - p_int8)
    result = dict(
        photos=len(p_full),
        max_p_difference=float(difference.max()),
        mean_p_difference=float(difference.mean()),
        max_p_allowed=MAX_P_DIFFERENCE,
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
        to_unfamiliar, to_familiar, _ = familiarity_flips(d_full, d_int8, limit)
        result.update(
            familiar_to_unfamiliar=to_unfamiliar,
            unfamiliar_to_familiar=to_familiar,
            max_distance_change=largest_finite(np.abs(d_full - d_int8) / max(limit, 1e-12)),
        )
    result["within_tolerance"] = within_tolerance(result, distances is not None)
    return result


def within_tolerance(result, familiar):
    """Whether the page may run the twin, recomputed from its comparison's numbers (never from its stored verdict,
    nor from the allowances it records): its P(malignant) at most MAX_P_DIFFERENCE from the full model's on every
    photo, no label changed outside the borderline band, both ROC-AUCs measured and the twin's at most MAX_AUC_DROP
    below the full model's, and, for a model with a familiarity measure (familiar), its flips counted and none."""
    full, int8 = result["roc_auc_full"], result["roc_auc_int8"]
    if full is None or int8 is None or not int8 >= full - MAX_AUC_DROP:
        return False
    if not result["max_p_difference"] <= MAX_P_DIFFERENCE or result["label_changes_outside_band"] != 0:
        return False
    if not familiar:
        return True
    flips = [result.get(key) for key in ("familiar_to_unfamiliar", "unfamiliar_to_familiar")]
    return flips == [0, 0]


def comparison_text(result):
    """One line on the twin against the full model, every number the rule reads, as export_onnx.py prints it and
    the page shows it."""
    aucs = "ROC-AUC not measured (no labelled photos of both sides)"
    if result["roc_auc_full"] is not None:
        aucs = f"ROC-AUC {result['roc_auc_int8']:.3f} against {result['roc_auc_full']:.3f}"
    flips = ""
    if "familiar_to_unfamiliar" in result:
        moved = result["max_distance_change"]
        moved_text = "" if moved is None else f" (distances move by at most {moved:.1%} of the limit)"
        flips = (
            f", {result['familiar_to_unfamiliar']} photos turn unfamiliar and {result['unfamiliar_to_familiar']} "
            f"familiar{moved_text}"
        )
    verdict = (
        "within tolerance" if result["within_tolerance"] else "NOT within tolerance: the page keeps the full model"
    )
    mean = result.get("mean_p_difference")
    mean_text = "" if mean is None else f" ({mean:.4f} on average)"
    return (
        f"on {result['photos']} validation photos its P(malignant) differs by at most "
        f"{result['max_p_difference']:.4f}{mean_text}, {result['label_changes']} labels change "
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
