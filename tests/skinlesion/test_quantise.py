"""The page's smaller model (skinlesion/quantise.py, export_onnx.py's int8 twin, serve_web.py's choice): the
comparison's numbers against values computed here, the tolerance's edges, and the whole path on the suite's
trained model: the twin is written beside the export, its weights int8 or float16, its comparison in its
metadata; predict.py takes it; serve_web.py runs it only where it was made from that very export and kept within
tolerance."""

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import export_onnx
import model
import predict
import serve_web
from conftest import changed_output, fingerprint, set_self_check
from skinlesion import answer, files, metrics, model_file, photos, quantise


def test_the_twin_is_named_beside_its_export():
    assert quantise.quantised_path("a/skin_model.onnx") == "a/skin_model.int8.onnx"


def test_comparison_counts_changed_labels_and_those_outside_the_band():
    p_full = np.array([0.10, 0.49, 0.51, 0.90, 0.30, 0.70])
    p_int8 = np.array([0.12, 0.51, 0.49, 0.40, 0.31, 0.69])  # 0.49 -> 0.51 and 0.51 -> 0.49 in the band; 0.90 not
    y = np.array([0, 0, 1, 1, 0, 1])
    result = quantise.comparison(p_full, p_int8, y, threshold=0.5, band=0.02)
    assert result["photos"] == 6 and result["max_p_difference"] == pytest.approx(0.5)
    assert result["label_changes"] == 3 and result["label_changes_outside_band"] == 1
    assert result["roc_auc_full"] == pytest.approx(metrics.roc_auc(y, p_full))
    assert result["roc_auc_int8"] == pytest.approx(7 / 9)  # pairs (malignant, benign) ranked right, by hand
    assert not result["within_tolerance"]


def test_the_borderline_band_is_measured_from_the_full_models_p_and_its_edges_are_the_pages():
    """A changed label counts as outside the band where the full model's P lies band or further from the threshold
    (the page calls a P borderline only within less than band): exactly at band it is outside, just inside it is
    not; a P that the twin moves into the band still counts, one it moves out of the band does not. Threshold 0.5,
    band 0.25: exact in binary."""
    threshold, band = 0.5, 0.25
    p_full = np.array([0.75, np.nextafter(0.75, 0), 0.25, np.nextafter(0.25, 1), 0.8, 0.55, 0.9])
    p_int8 = np.array([0.45, 0.45, 0.55, 0.55, 0.45, 0.2, 0.95])
    expected = 0  # by hand: label changed, and the full model's P not borderline (|P - threshold| < band)
    for full, int8 in zip(p_full, p_int8):
        changed = (full >= threshold) != (int8 >= threshold)
        borderline = abs(full - threshold) < band
        expected += bool(changed and not borderline)
    assert expected == 3  # 0.75, 0.25 and 0.8; not the two just inside, nor 0.55 -> 0.2; 0.9 keeps its label
    result = quantise.comparison(p_full, p_int8, None, threshold, band)
    assert result["label_changes"] == 6 and result["label_changes_outside_band"] == expected


def record(**changes):
    """A comparison as export_onnx.py stores it, within tolerance, of a model with a familiarity measure."""
    kept = dict(photos=300, max_p_difference=0.005, mean_p_difference=0.001, max_p_allowed=quantise.MAX_P_DIFFERENCE,
                label_changes=2, label_changes_outside_band=0, roc_auc_full=0.9, roc_auc_int8=0.9,
                max_auc_drop=quantise.MAX_AUC_DROP, within_tolerance=True, from_sha256="ab" * 32, photos_from="val",
                familiar_to_unfamiliar=0, unfamiliar_to_familiar=0, max_distance_change=0.03)  # fmt: skip
    return dict(kept, **changes)


WITHOUT_FAMILIARITY = ("familiar_to_unfamiliar", "unfamiliar_to_familiar", "max_distance_change")
AT_MOST = quantise.MAX_P_DIFFERENCE  # 0.01: the largest P difference allowed, and the next float above it
JUST_OVER = np.nextafter(AT_MOST, 1)
RULE_EDGES = {  # the record's numbers: whether the page may run the twin (its stored within_tolerance is ignored)
    "as kept": (record(), True),
    "P differs by 0.01 at most": (record(max_p_difference=AT_MOST), True),
    "P differs by just over 0.01": (record(max_p_difference=JUST_OVER), False),
    "P differs by just over 0.01, a wider allowance recorded": (
        record(max_p_difference=JUST_OVER, max_p_allowed=1),
        False,
    ),
    "ROC-AUC exactly 0.005 lower": (record(roc_auc_int8=0.9 - quantise.MAX_AUC_DROP), True),
    "ROC-AUC just over 0.005 lower": (record(roc_auc_int8=np.nextafter(0.9 - quantise.MAX_AUC_DROP, 0)), False),
    "ROC-AUC 0.0051 lower, a wider max_auc_drop recorded": (record(roc_auc_int8=0.8949, max_auc_drop=0.5), False),
    "ROC-AUC higher": (record(roc_auc_int8=0.95), True),
    "ROC-AUC not measured": (record(roc_auc_full=None, roc_auc_int8=None), False),
    "no label outside the band, 40 inside": (record(label_changes=40), True),
    "1 label outside the band": (record(label_changes_outside_band=1), False),
    "1 photo turns unfamiliar": (record(familiar_to_unfamiliar=1), False),
    "1 photo turns familiar": (record(unfamiliar_to_familiar=1), False),
    "a twin of the static quantiser: 1 flip within its band": (
        record(familiar_to_unfamiliar=1, familiarity_flips_outside_band=0, familiarity_band=0.05),
        False,
    ),
    "no familiarity counts": ({k: v for k, v in record().items() if k not in WITHOUT_FAMILIARITY}, False),
}


@pytest.mark.parametrize("case", RULE_EDGES)
@pytest.mark.parametrize("stored", [True, False])
def test_the_pages_rule_is_recomputed_from_the_numbers_never_the_stored_verdict(case, stored):
    result, kept = RULE_EDGES[case]
    assert quantise.within_tolerance(dict(result, within_tolerance=stored), familiar=True) is kept


def test_a_model_without_a_familiarity_measure_needs_no_familiarity_counts():
    without = {k: v for k, v in record().items() if k not in WITHOUT_FAMILIARITY}
    assert quantise.within_tolerance(without, familiar=False)
    assert not quantise.within_tolerance(dict(without, label_changes_outside_band=1), familiar=False)
    assert not quantise.within_tolerance(dict(without, max_p_difference=JUST_OVER), familiar=False)


LOWEST_AUC = 0.9 - quantise.MAX_AUC_DROP  # the lowest the twin's ROC-AUC may be for a full model's 0.9


@pytest.mark.parametrize("int8_auc, kept", [(LOWEST_AUC, True), (np.nextafter(LOWEST_AUC, 0), False)])
def test_the_roc_auc_may_fall_by_max_auc_drop_and_no_more(monkeypatch, int8_auc, kept):
    aucs = iter([0.9, int8_auc])
    monkeypatch.setattr(metrics, "roc_auc", lambda y, p: next(aucs))
    p = np.array([0.2, 0.8])
    result = quantise.comparison(p, p, np.array([0, 1]), threshold=0.5, band=0.02)
    assert result["within_tolerance"] is kept and quantise.MAX_AUC_DROP == 0.005


@pytest.mark.parametrize("moved, kept", [(AT_MOST, True), (JUST_OVER, False)])
def test_p_may_differ_by_max_p_difference_on_every_photo_and_no_more(monkeypatch, moved, kept):
    """One photo's P moved by 0.01 (from 0: exact) keeps the twin; by the next float above it, not. The mean is
    the mean of the differences, computed here."""
    monkeypatch.setattr(metrics, "roc_auc", lambda y, p: 0.9)
    p_full = np.array([0.0, 0.8, 0.3])
    p_int8 = np.array([moved, 0.8, 0.3 + 0.001])
    result = quantise.comparison(p_full, p_int8, np.array([0, 1, 0]), threshold=0.5, band=0.02)
    assert result["max_p_difference"] == moved and result["within_tolerance"] is kept
    assert result["mean_p_difference"] == pytest.approx((moved + 0.001) / 3)
    assert f"differs by at most {moved:.4f} ({(moved + 0.001) / 3:.4f} on average)" in quantise.comparison_text(result)


@pytest.mark.parametrize("inside, kept", [(True, True), (False, False)])
def test_a_label_change_is_allowed_just_inside_the_band_and_not_at_its_edge(monkeypatch, inside, kept):
    """Threshold 0.5, band 2^-8 (exact in binary): a full-model P of 0.5 + 2^-8 lies at the band's edge (not
    borderline: the page calls borderline only within less than band), one 2^-20 below it inside; the twin's P
    (0.5 - 2^-9) changes the label and stays within 0.01 of it."""
    monkeypatch.setattr(metrics, "roc_auc", lambda y, p: 0.9)
    threshold, band = 0.5, 2.0**-8
    full = threshold + band - (2.0**-20 if inside else 0)
    assert (abs(full - threshold) < band) is inside  # by hand: the page's borderline
    p_full, p_int8 = np.array([full, 0.1, 0.9]), np.array([threshold - 2.0**-9, 0.1, 0.9])
    result = quantise.comparison(p_full, p_int8, np.array([1, 0, 1]), threshold, band)
    assert result["max_p_difference"] <= quantise.MAX_P_DIFFERENCE and result["label_changes"] == 1
    assert result["label_changes_outside_band"] == (0 if inside else 1) and result["within_tolerance"] is kept


def test_without_labels_of_both_sides_it_is_not_within_tolerance():
    p = np.array([0.2, 0.8])
    result = quantise.comparison(p, p, np.array([1, 1]), threshold=0.5, band=0.02)
    assert result["roc_auc_full"] is None and not result["within_tolerance"]
    assert "ROC-AUC not measured" in quantise.comparison_text(result)


def test_familiarity_flips_are_counted_each_way():
    limit = 10.0
    rng = np.random.default_rng(0)
    d_full = np.concatenate([rng.uniform(0, 20, 200), [10.0, 10.4, 9.6, 12.0, 7.0, np.nan, 3.0]])
    d_int8 = np.concatenate([d_full[:200] * rng.uniform(0.97, 1.03, 200), [10.2, 9.9, 10.1, 9.0, 11.0, 5.0, np.nan]])
    # by hand, photo by photo: familiar is distance <= limit (NaN unfamiliar); near is |d_full - limit| <= 5% of it
    to_unfamiliar = to_familiar = outside = 0
    for full, int8 in zip(d_full, d_int8):
        familiar_full, familiar_int8 = bool(full <= limit), bool(int8 <= limit)
        to_unfamiliar += familiar_full and not familiar_int8
        to_familiar += familiar_int8 and not familiar_full
        outside += familiar_full != familiar_int8 and not bool(abs(full - limit) <= 0.05 * limit)
    assert to_unfamiliar >= 4 and to_familiar >= 3 and outside == 4  # 12 -> 9, 7 -> 11, NaN -> 5, 3 -> NaN
    assert quantise.familiarity_flips(d_full, d_int8, limit) == (to_unfamiliar, to_familiar, outside)
    p = np.full(len(d_full), 0.2)
    result = quantise.comparison(p, p, None, 0.5, 0.02, (d_full, d_int8), limit)
    assert result["familiar_to_unfamiliar"] == to_unfamiliar and result["unfamiliar_to_familiar"] == to_familiar
    moved = np.nanmax(np.abs(d_full - d_int8) / limit)
    assert result["max_distance_change"] == pytest.approx(moved)
    said = quantise.comparison_text(result)
    assert f"{to_unfamiliar} photos turn unfamiliar and {to_familiar} familiar (distances move by at most " in said
    assert f"{moved:.1%} of the limit)" in said


@pytest.mark.parametrize("int8_distance, flips", [(10.0, 0), (np.nextafter(10.0, 11), 1), (9.0, 0)])
def test_one_flip_however_near_the_limit_is_not_within_tolerance(monkeypatch, int8_distance, flips):
    """A photo at the limit (10: familiar) that the twin moves by the least float beyond it flips, and one flip
    refuses the twin (issue 31: no band near the limit any more); at the limit or further inside, it is kept."""
    monkeypatch.setattr(metrics, "roc_auc", lambda y, p: 0.9)
    p, y = np.array([0.2, 0.8, 0.3]), np.array([0, 1, 0])
    d_full, d_int8 = np.array([5.0, 6.0, 10.0]), np.array([5.0, 6.0, int8_distance])
    result = quantise.comparison(p, p, y, 0.5, 0.02, (d_full, d_int8), 10.0)
    assert result["familiar_to_unfamiliar"] == flips and result["unfamiliar_to_familiar"] == 0
    assert result["within_tolerance"] is (flips == 0)
    result = quantise.comparison(p, p, y, 0.5, 0.02, (d_int8, d_full), 10.0)  # the other way
    assert result["unfamiliar_to_familiar"] == flips and result["within_tolerance"] is (flips == 0)


def test_int8_per_channel_maps_each_channels_largest_weight_to_127():
    """Symmetric per output channel: scale = max|w| / 127 of the channel, computed here; the largest weight of
    each channel is +-127 exactly, every weight comes back within half a scale, a channel of zeros stays zeros."""
    weight = np.array([[0.5, -0.25, 0.1], [-2.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    values, scale = quantise.int8_per_channel(weight, axis=0)
    assert values.dtype == np.int8 and scale.dtype == np.float32
    assert scale.tolist() == pytest.approx([0.5 / 127, 2.0 / 127, 1.0])
    assert values[0, 0] == 127 and values[1, 0] == -127 and not values[2].any()
    assert np.abs(values * scale[:, None] - weight).max() <= scale.max() / 2
    values, scale = quantise.int8_per_channel(weight, axis=1)  # per column
    assert scale.tolist() == pytest.approx([2.0 / 127, 1.0 / 127, 0.1 / 127]) and values[1, 0] == -127


def tiny_graph(path):
    """An ONNX graph of a 3x3 convolution (8 channels), a depthwise one, a pool and a Gemm (2 classes), float32,
    and a 'basis' matrix (8 x 4) it multiplies the pooled features by: what quantise reads in an export."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    arrays = dict(stem=rng.normal(0, 0.3, (8, 3, 3, 3)), dw=rng.normal(0, 0.3, (8, 1, 3, 3)),
                  fc=rng.normal(0, 0.3, (2, 8)), basis=rng.normal(0, 0.3, (8, 4)))  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["image", "stem"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "dw"], ["b"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("GlobalAveragePool", ["b"], ["c"]),
        helper.make_node("Flatten", ["c"], ["d"]),
        helper.make_node("Gemm", ["d", "fc"], ["logits"], transB=1),
        helper.make_node("MatMul", ["d", "basis"], ["projected"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("logits", "projected")],
        [numpy_helper.from_array(a.astype(np.float32), name) for name, a in arrays.items()],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return arrays


@pytest.mark.parametrize("int8_depths", [3, 1, 0])
def test_the_twin_stores_the_deepest_layers_int8_and_dequantises_them_in_the_graph(tmp_path, int8_depths):
    """The deepest int8_depths of the 3 layers (Gemm, then the depthwise, then the stem) int8 per output channel,
    turned back to float32 by DequantizeLinear on axis 0; the others float16 through Cast; the basis int8 per
    column (axis 1); the outputs within the rounding computed here from the same stored weights."""
    full, small = str(tmp_path / "full.onnx"), str(tmp_path / "small.onnx")
    arrays = tiny_graph(full)
    quantise.quantise(full, small, int8_depths)
    proto = onnx.load(small)
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    made = {node.output[0]: node for node in proto.graph.node if node.op_type in ("DequantizeLinear", "Cast")}
    int8 = ["fc", "dw", "stem"][:int8_depths]
    for name in ("stem", "dw", "fc", "basis"):
        node = made[name]
        if name in int8 or name == "basis":
            axis = 1 if name == "basis" else 0
            assert node.op_type == "DequantizeLinear" and onnx.helper.get_attribute_value(node.attribute[0]) == axis
            assert stored[f"{name}.int8"].dtype == np.int8 and name not in stored
            others = tuple(i for i in range(arrays[name].ndim) if i != axis)
            scale = np.abs(arrays[name]).max(axis=others) / 127
            assert stored[f"{name}.scale"] == pytest.approx(scale, rel=1e-6)
        else:
            assert node.op_type == "Cast" and stored[f"{name}.float16"].dtype == np.float16
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    out_full, out_small = (ort.InferenceSession(f).run(["logits"], {"image": x})[0] for f in (full, small))
    assert 0 < np.abs(out_full - out_small).max() < 0.05 * np.abs(out_full).max()
    kept = sum(a.size * (1 if n in int8 or n == "basis" else 2) for n, a in arrays.items())
    assert os.path.getsize(small) < os.path.getsize(full) - 4 * sum(a.size for a in arrays.values()) + kept + 600


@pytest.mark.parametrize("int8_depths", [3, 1])
def test_bias_correction_subtracts_the_shift_the_rounding_makes_on_the_inputs_mean(tmp_path, int8_depths):
    """Each layer's bias (none in the tiny graph: one is added) becomes minus (W_stored - W) . E[x], computed here
    from the twin's own stored weights (int8 x scale, or float16): the stem over its 3 input channels and 3x3
    kernel, the depthwise convolution within each channel, the Gemm over its 8 inputs."""
    full, small = str(tmp_path / "full.onnx"), str(tmp_path / "small.onnx")
    arrays = tiny_graph(full)
    rng = np.random.default_rng(2)
    means = {"stem": rng.normal(size=3), "dw": rng.normal(size=8), "fc": rng.normal(size=8)}
    quantise.quantise(full, small, int8_depths, means=means)
    proto = onnx.load(small)
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    biases = {node.input[1]: stored[node.input[2]] for node in proto.graph.node if node.op_type in ("Conv", "Gemm")}
    for name in ("stem", "dw", "fc"):
        if f"{name}.int8" in stored:
            shape = (-1,) + (1,) * (arrays[name].ndim - 1)
            as_stored = stored[f"{name}.int8"] * stored[f"{name}.scale"].reshape(shape).astype(np.float64)
        else:
            as_stored = stored[f"{name}.float16"].astype(np.float64)
        change = as_stored - arrays[name].astype(np.float32)
        if name == "stem":
            shift = np.einsum("oikl,i->o", change, means[name])
        elif name == "dw":
            shift = change.sum(axis=(1, 2, 3)) * means[name]
        else:
            shift = change @ means[name]
        assert biases[name] == pytest.approx(-shift, rel=1e-5, abs=1e-7), name
        assert np.abs(shift).max() > 0


def test_with_bias_correction_a_layers_output_keeps_its_mean_per_channel(tmp_path):
    """A 1x1 convolution with a bias, its weights int8: layer_input_means gives the mean of its input per channel
    over the photos (computed here), and with it the twin's output keeps the full model's mean per channel on
    those photos (float32 rounding), where without it the mean moves."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weight, bias = rng.normal(0, 0.3, (4, 3, 1, 1)), rng.normal(size=4)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["out"])], "one",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 5, 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a.astype(np.float32), name) for name, a in (("w", weight), ("b", bias))],
    )  # fmt: skip
    full, small, plain = (str(tmp_path / f"{name}.onnx") for name in ("full", "small", "plain"))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), full)
    images = (rng.normal(size=(20, 3, 5, 5)) + np.array([3.0, -2.0, 5.0])[:, None, None]).astype(np.float32)
    means = quantise.layer_input_means(full, images, batch=6)
    assert list(means) == ["w"] and means["w"] == pytest.approx(images.mean(axis=(0, 2, 3)), rel=1e-6)
    quantise.quantise(full, small, 1, means=means)
    quantise.quantise(full, plain, 1)
    mean_out = {path: ort.InferenceSession(path).run(["out"], {"image": images})[0].mean(axis=(0, 2, 3))
                for path in (full, small, plain)}  # fmt: skip
    assert mean_out[small] == pytest.approx(mean_out[full], abs=1e-5)
    assert np.abs(mean_out[plain] - mean_out[full]).max() > 1e-4


def test_the_basis_columns_at_the_floor_are_left_out_exactly(tmp_path):
    """Columns whose precision lies at the floor add what the floor adds: the twin leaves them out (with their
    precisions) and the distance it gives is the same within float32."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    basis, precisions = np.linalg.qr(rng.normal(size=(6, 4)))[0], np.array([0.5, 1.0, 2.0, 2.0])
    floor = 2.0
    nodes = [helper.make_node("MatMul", ["x", "basis"], ["along"]),
             helper.make_node("Mul", ["along", "along"], ["squared"]),
             helper.make_node("Mul", ["squared", "precisions"], ["weighted"]),
             helper.make_node("ReduceSum", ["weighted"], ["distance"], keepdims=0)]  # fmt: skip
    graph = helper.make_graph(
        nodes, "measure", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info("distance", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(basis.astype(np.float32), "basis"),
         numpy_helper.from_array(precisions.astype(np.float32), "precisions")],
    )  # fmt: skip
    full, small = str(tmp_path / "full.onnx"), str(tmp_path / "small.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), full)
    assert quantise.at_the_floor(onnx.load(full).graph, floor).tolist() == [2, 3]
    quantise.quantise(full, small, 0, measure="float32", floor=floor)
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(small).graph.initializer}
    assert stored["basis"].shape == (6, 2) and stored["precisions"].tolist() == [0.5, 1.0]


def test_the_smallest_twin_is_found_by_halving_and_float16_where_nothing_holds():
    """judge(k): a comparison whose P difference grows with k; the twin chosen is the largest k that holds (within
    tolerance and SEARCH_SHARE of the allowed P difference), all of them where all hold, 0 where none does."""

    def judge_with(differences):
        asked = []

        def judge(k):
            asked.append(k)
            return dict(within_tolerance=differences[k] <= quantise.MAX_P_DIFFERENCE, max_p_difference=differences[k])

        return judge, asked

    margin = quantise.SEARCH_SHARE * quantise.MAX_P_DIFFERENCE
    grows = [margin * k / 20 for k in range(51)]  # within the margin up to k = 20, over it from k = 21
    judge, asked = judge_with(grows)
    assert quantise.smallest_within(50, judge)[0] == 20 and len(asked) <= 9
    assert quantise.smallest_within(50, judge_with([0.0] * 51)[0]) == (50, dict(within_tolerance=True,
                                                                               max_p_difference=0.0))  # fmt: skip
    judge, asked = judge_with([margin * 1.01] * 51)  # within tolerance, not within the search's margin
    k, found = quantise.smallest_within(50, judge)
    assert (k, asked) == (0, [50, 0]) and found["within_tolerance"]


def test_the_depths_join_an_ensembles_members():
    """An ensemble's members' layers at one depth are one depth (ensemble.py names them members.<i>.)."""
    from onnx import helper

    names = ["net.members.0.conv_stem.weight", "net.members.0.conv_head.weight", "net.members.1.conv_stem.weight",
             "net.members.1.conv_head.weight", "net.classifier.weight"]  # fmt: skip
    nodes = [helper.make_node("Conv", ["x", name], [f"y{i}"]) for i, name in enumerate(names[:-1])]
    graph = helper.make_graph(nodes + [helper.make_node("Gemm", ["z", names[-1]], ["w"], transB=1)], "g", [], [])
    assert quantise.depths(graph) == ["net.conv_stem.weight", "net.conv_head.weight", "net.classifier.weight"]
    plan = quantise.small_weights(graph, 2, measure="float32")
    assert {name: how for name, (how, _) in plan.items()} == {names[0]: "float16", names[1]: "int8",
                                                              names[2]: "float16", names[3]: "int8",
                                                              names[4]: "int8"}  # fmt: skip


@pytest.fixture(scope="module")
def twin(trained_onnx, demo_dataset):
    """export_onnx.py of the suite's trained model, with its int8 twin searched for and judged on dataset/val
    (conftest.trained_onnx, shared: the tests here read it, and copy it before changing it)."""
    full = trained_onnx["full"]
    val, test = os.path.join(demo_dataset, "val"), os.path.join(demo_dataset, "test")
    assert trained_onnx["int8"] == quantise.quantised_path(full)
    return dict(full=full, int8=trained_onnx["int8"], stdout=trained_onnx["stdout"], val=val, test=test)


def test_export_writes_a_smaller_twin_that_says_how_it_compares(twin):
    _, meta = model.load_onnx(twin["int8"])  # every check a model file gets
    result = meta["quantised"]
    assert result["from_sha256"] == files.file_sha256(twin["full"])
    # the comparison, recomputed here from the two files on the same photos
    x, y = [], []
    for side in meta["classes"]:
        for name in sorted(os.listdir(os.path.join(twin["val"], side))):
            img = photos.load_image(os.path.join(twin["val"], side, name))
            x.append(photos.preprocess(img, model_file.meta_data_config(meta)))
            y.append(int(side == "malignant"))
    x = np.stack(x)
    p = [quantise.p_malignant(ort.InferenceSession(f), x) for f in (twin["full"], twin["int8"])]
    assert result["photos"] == len(x) and result["max_p_difference"] == pytest.approx(np.abs(p[0] - p[1]).max())
    assert result["mean_p_difference"] == pytest.approx(np.abs(p[0] - p[1]).mean())
    assert result["roc_auc_int8"] == pytest.approx(metrics.roc_auc(np.array(y), p[1]))
    d = [ort.InferenceSession(f).run(["familiarity_distance"], {"image": x})[0] for f in (twin["full"], twin["int8"])]
    familiar = [distance <= meta["familiarity"]["limit"] for distance in d]
    assert result["familiar_to_unfamiliar"] == np.sum(familiar[0] & ~familiar[1])
    assert result["unfamiliar_to_familiar"] == np.sum(~familiar[0] & familiar[1])
    assert f"wrote {twin['int8']} (" in twin["stdout"] and quantise.comparison_text(result) in twin["stdout"]


def test_the_twins_weights_are_int8_or_float16_and_its_size_what_they_give(twin):
    """Every convolution's and the classifier's weight of the full model comes back in the twin through a
    DequantizeLinear of int8 values (axis 0) for the deepest int8_depths layers its record names, a Cast of
    float16 for the others; the familiarity basis through int8 per column. Its size: the full file's less 4 bytes
    a number of each weight, plus 1 (int8, and a 4-byte scale a channel) or 2 (float16), less the basis's columns
    at the floor; within 1% (the graph's new nodes and its own self-check and comparison in its metadata)."""
    full, small = onnx.load(twin["full"]), onnx.load(twin["int8"])
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in full.graph.initializer}
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in small.graph.initializer}
    made = {node.output[0]: node for node in small.graph.node if node.op_type in ("DequantizeLinear", "Cast")}
    layers = [node.input[1] for node in full.graph.node if node.op_type in ("Conv", "Gemm")]
    result = model.load_onnx(twin["int8"])[1]["quantised"]
    assert result["depths"] == len(layers) and 0 <= result["int8_depths"] <= len(layers)
    int8 = set(layers[len(layers) - result["int8_depths"] :])
    expected = os.path.getsize(twin["full"])
    for name in layers:
        how = made[name].op_type
        assert how == ("DequantizeLinear" if name in int8 else "Cast") and name not in stored, name
        if name in int8:
            assert stored[f"{name}.int8"].dtype == np.int8 and stored[f"{name}.scale"].size == weights[name].shape[0]
            expected -= 3 * weights[name].size - 4 * weights[name].shape[0]
        else:
            assert stored[f"{name}.float16"].dtype == np.float16
            expected -= 2 * weights[name].size
    basis = stored["basis.int8"]
    assert made["basis"].op_type == "DequantizeLinear" and basis.dtype == np.int8
    dropped = weights["basis"].shape[1] - basis.shape[1]
    expected -= 4 * weights["basis"].size - basis.size - 4 * basis.shape[1] + 4 * dropped
    assert os.path.getsize(twin["int8"]) == pytest.approx(expected, rel=0.01)
    ratio = os.path.getsize(twin["int8"]) / os.path.getsize(twin["full"])
    assert f"{ratio:.2f} of the full model; {quantise.weights_text(result)};" in twin["stdout"]


def test_a_twin_that_fails_the_check_every_model_file_gets_is_not_written(twin, tmp_path, monkeypatch, capsys):
    """A quantiser whose twin's familiarity distance came out 0 everywhere (here: the full model so rewired): the twin
    would call every photo familiar, so load_onnx would refuse it; export_onnx.py does not write it and says why."""
    full = str(tmp_path / "m.onnx")
    shutil.copy(twin["full"], full)

    def quantise_to_zero_distance(full_path, out_path, *how, **options):
        shutil.copy(full_path, out_path)
        changed_output(out_path, "familiarity_distance", None)

    monkeypatch.setattr(quantise, "quantise", quantise_to_zero_distance)
    _, meta = model.load_onnx(full)
    before = fingerprint(tmp_path, marks=False)
    args = SimpleNamespace(output=full, quantise_images=twin["val"], given=set())
    export_onnx.write_int8_twin(args, meta)
    limit = meta["familiarity"]["limit"]
    assert capsys.readouterr().out.strip() == (
        f"no int8 twin {tmp_path / 'm.int8.onnx'} written: it fails the check every model file gets (its "
        f"familiarity_distance puts none of the 3 check inputs (patterns unlike any photo) beyond its limit "
        f"{limit:.4g}: it could not tell an unfamiliar photo)"
    )
    assert fingerprint(tmp_path, marks=False) == before


def test_predict_takes_the_twin(twin, capsys):
    """predict.py reads the twin as any ONNX file of ours. Its int8 features move the familiarity distance too, so
    a photo may come out unfamiliar (exit 3) under the twin: an answer either way, never a refusal."""
    photo = os.path.join(twin["test"], "malignant", sorted(os.listdir(os.path.join(twin["test"], "malignant")))[0])
    status = predict.main([photo, "--model", twin["int8"]])
    first = capsys.readouterr().out.splitlines()[0]
    assert status == (predict.UNFAMILIAR_EXIT if first == "Prediction: unfamiliar" else None), (status, first)
    assert first.startswith(("Prediction: benign", "Prediction: malignant", "Prediction: unfamiliar"))


def set_result(path, **changes):
    proto = onnx.load(path)
    for prop in proto.metadata_props:
        if prop.key == "quantised":
            prop.value = json.dumps(dict(json.loads(prop.value), **changes))
    onnx.save(proto, path)


def test_the_page_runs_the_twin_only_when_it_is_this_exports_and_its_numbers_keep_within_tolerance(twin, tmp_path):
    """serve_web.py recomputes the rule from the twin's recorded numbers: a record saying 1 photo turns unfamiliar,
    or P moved by just over 0.01, with within_tolerance true keeps the full model in the page, and predict.py and
    the page's model.json (read_model) carry the recomputed verdict (the page's caution); numbers that keep within
    tolerance put the twin in the page whatever the stored verdict says, and its text says which model and why."""
    full, int8 = str(tmp_path / "m.onnx"), str(tmp_path / "m.int8.onnx")
    shutil.copy(twin["full"], full)
    shutil.copy(twin["int8"], int8)
    kept = {k: v for k, v in record().items() if k not in ("from_sha256", "photos_from")}
    set_result(int8, **dict(kept, within_tolerance=False, int8_depths=3, depths=50))
    chosen, said = serve_web.page_model(full, True)
    ratio = os.path.getsize(int8) / os.path.getsize(full)
    assert chosen == int8 and said.startswith(
        f"the int8-weight model ({os.path.getsize(int8) / 1e6:.1f} MB, {ratio:.2f} of the full model; int8 weights in "
        "its deepest 3 of 50 layers, float16 in the others): on 300 validation photos its P(malignant) differs by at "
        "most 0.0050 (0.0010 on average)"
    )
    assert said.endswith(": within tolerance")
    assert serve_web.page_model(full, False) == (full, "the full model (--no-small-model)")
    for forged in [
        dict(familiar_to_unfamiliar=1),
        dict(unfamiliar_to_familiar=1),
        dict(max_p_difference=np.nextafter(quantise.MAX_P_DIFFERENCE, 1)),
        dict(label_changes=3, label_changes_outside_band=1),
        dict(roc_auc_int8=0.9 - 0.0051),
    ]:
        set_result(int8, **dict(kept, **forged, within_tolerance=True))
        chosen, said = serve_web.page_model(full, True)
        assert chosen == full and "NOT within tolerance" in said, forged
        assert said.startswith(f"the full model ({os.path.getsize(full) / 1e6:.1f} MB; its int8-weight twin, ")
        assert answer.STRAYED in answer.model_cautions(model.load_onnx(int8)[1])
        assert serve_web.read_model(int8)["quantised"]["within_tolerance"] is False
    set_self_check(int8, drop=["cam"])  # a twin that fails the check every model file gets (one of an earlier version)
    chosen, said = serve_web.page_model(full, True)
    assert chosen == full and said.endswith("its self_check holds no cam (exported by an earlier version); export "
                                            "the model again with export_onnx.py)")  # fmt: skip
    shutil.copy(twin["int8"], int8)
    set_result(int8, **dict(kept, within_tolerance=True, from_sha256="0" * 64))  # made from another export
    chosen, said = serve_web.page_model(full, True)
    assert chosen == full and "was not made from this export" in said
    os.remove(int8)
    assert "no int8 twin" in serve_web.page_model(full, True)[1]


def test_the_page_says_an_ensembles_twin_runs_its_fold_networks_averaged(twin, tmp_path, monkeypatch):
    """A twin whose metadata says it averages 5 networks (AItraining.py --deploy ensemble): the page's text says
    so, whether it runs the twin or keeps the full model."""
    full, int8 = str(tmp_path / "m.onnx"), str(tmp_path / "m.int8.onnx")
    shutil.copy(twin["full"], full)
    shutil.copy(twin["int8"], int8)
    read = model.read_onnx

    def with_members(path):
        session, meta, error = read(path)
        return session, dict(meta, members=5), error

    monkeypatch.setattr(model, "read_onnx", with_members)
    kept = {k: v for k, v in record().items() if k not in ("from_sha256", "photos_from")}
    set_result(int8, **kept)
    chosen, said = serve_web.page_model(full, True)
    assert chosen == int8 and said.startswith("the int8-weight model of the 5 fold networks averaged (")
    set_result(int8, **dict(kept, familiar_to_unfamiliar=1))
    chosen, said = serve_web.page_model(full, True)
    assert chosen == full and said.startswith("the full model of the 5 fold networks averaged (")
