"""skinlesion/onnx_file.py's self-check with a stand-in for an onnxruntime session (numpy, whose outputs a test
changes at will): every output compared with its record by its largest difference, at both edges of its
tolerance; a NaN is never within; the check inputs run at once and the first alone; p_malignant what the logits
give; and at least one check input beyond the familiarity limit, whatever the record says. The same checks on real
exported files: tests/test_export_onnx.py."""

import numpy as np
import pytest

from skinlesion import onnx_file

SIZE, LIMIT, TOLERANCE = 32, 10.0, 1e-4
NAMES = ["logits", "p_malignant", "cam", "familiarity_distance"]


def p_of_logits(logits):
    """A stand-in calibration: the logistic of the logit difference."""
    return 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0])))


class Session:
    """Outputs that depend on each input: logits from its mean and spread, p_malignant from them (p_of_logits), a
    2 x 2 map from its quadrants' mean squares, and a distance of 3 x LIMIT x its spread (the sine patterns' spreads are
    about 1: beyond the limit). changes: {(name, batch): delta added to that output at that batch size (None: any)}."""

    def __init__(self, changes=None, fails=False):
        self.changes, self.fails = changes or {}, fails

    def get_inputs(self):
        return [type("Input", (), {"name": "image"})]

    def run(self, names, feed):
        if self.fails:
            raise RuntimeError("out of memory")
        x = feed["image"].astype(np.float64)
        logits = np.stack([x.mean((1, 2, 3)), x.std((1, 2, 3))], 1)
        quadrants = x.reshape(len(x), 3, 2, SIZE // 2, 2, SIZE // 2)
        cam = (quadrants**2).mean((1, 3, 5)) * np.array([[1.0, -1.0], [0.5, 2.0]])
        found = dict(logits=logits, p_malignant=p_of_logits(logits), cam=cam,
                     familiarity_distance=3 * LIMIT * x.std((1, 2, 3)))  # fmt: skip
        for (name, batch), delta in self.changes.items():
            if batch is None or batch == len(x):
                found[name] = found[name] + delta
        return [found[name].astype(np.float32) for name in names]


def stored():
    """The record export_onnx.py would store for Session()."""
    x = onnx_file.check_inputs(SIZE)
    return onnx_file.self_check_record(dict(zip(NAMES, Session().run(NAMES, {"image": x}))))


def fault(session, record=None, limit=LIMIT):
    return onnx_file.session_fault(session, record or stored(), SIZE, NAMES, p_of_logits, limit, TOLERANCE)


def one_cell(value):
    cell = np.zeros((2, 2))
    cell[0, 0] = value
    return cell


def scales(name):
    """What each input's drift of output name is relative to (onnx_file.drifts), from the record, by hand."""
    record = {key: np.asarray(value) for key, value in stored().items() if key != "inputs"}
    if name == "logits":
        return np.array([max(1.0, np.abs(row).max()) for row in record["logits"]])
    if name == "cam":
        return np.array([np.abs(m).max() for m in record["cam"]])
    return np.array([max(LIMIT, d) for d in record["familiarity_distance"]])


def test_the_record_is_the_files_outputs_and_the_inputs_are_the_same_everywhere():
    record = stored()
    assert record["inputs"] == 3 and set(record) == {"inputs", *NAMES}
    assert np.array_equal(onnx_file.check_inputs(SIZE), onnx_file.check_inputs(SIZE))
    assert (np.asarray(record["familiarity_distance"]) > LIMIT).all()
    assert fault(Session()) is None


@pytest.mark.parametrize("name", ["logits", "cam", "familiarity_distance"])
@pytest.mark.parametrize("times, kept", [(0.5, True), (2.0, False)])
def test_each_output_may_drift_by_drift_and_no_more(name, times, kept):
    """An output changed for the input it moves least, relatively, by times x DRIFT of its scale there (the others
    by less): half of DRIFT is within, twice it is not."""
    scale = scales(name)
    input_ = int(np.argmax(scale))  # the largest scale: the smallest relative change there
    shape = {"logits": (3, 2), "cam": (3, 2, 2), "familiarity_distance": (3,)}[name]
    delta = np.zeros(shape)
    delta[input_] = times * onnx_file.DRIFT * scale[input_]  # the logits both alike: p_malignant stays theirs
    expected = None if kept else f"its outputs on the check inputs are not those stored when it was exported ({name})"
    assert fault(Session({(name, 3): delta, (name, 1): delta[:1]})) == expected


def test_one_cell_of_the_map_is_compared_by_the_largest_difference_never_a_mean():
    scale = scales("cam")
    delta = one_cell(2.5 * onnx_file.DRIFT * scale.max())
    relative = delta / scale[:, None, None]
    assert relative.mean() < onnx_file.DRIFT < relative.max()
    assert fault(Session({("cam", None): delta})).endswith("(cam)")


@pytest.mark.parametrize("name", NAMES)
def test_a_nan_in_any_output_is_a_fault(name):
    shape = {"logits": (2,), "p_malignant": (), "cam": (2, 2), "familiarity_distance": ()}[name]
    delta = np.zeros(shape)
    delta.flat[0] = np.nan
    found = fault(Session({(name, None): delta}))
    expected = {  # the first check the NaN meets (a NaN logit makes the P they give NaN)
        "logits": "its p_malignant is not what its logits and calibration give (off by nan)",
        "p_malignant": "its p_malignant is not what its logits and calibration give (off by nan)",
        "familiarity_distance": "its familiarity_distance puts none of the 3 check inputs",
    }.get(name, f"its outputs on the check inputs are not those stored when it was exported ({name})")
    assert found.startswith(expected), found


@pytest.mark.parametrize("batch", [1, 3])
def test_the_check_inputs_run_at_once_and_the_first_alone(batch):
    """A file that changes its map only at a batch of 1, or only at a batch of 3, is found."""
    assert fault(Session({("cam", batch): np.full((2, 2), 1.0)})).endswith("(cam)")


def test_p_malignant_must_be_what_the_files_own_logits_give():
    assert fault(Session({("p_malignant", None): 2 * TOLERANCE})).startswith(
        "its p_malignant is not what its logits and calibration give (off by 0.0002)"
    )
    assert fault(Session({("p_malignant", None): 0.5 * TOLERANCE})) is None


def test_a_distance_wired_to_0_is_refused_even_with_a_record_to_match():
    distances = np.asarray(stored()["familiarity_distance"])
    zero = Session({("familiarity_distance", 3): -distances, ("familiarity_distance", 1): -distances[:1]})
    expected = (
        f"its familiarity_distance puts none of the 3 check inputs (patterns unlike any photo) beyond its limit "
        f"{LIMIT:.4g}: it could not tell an unfamiliar photo"
    )
    assert fault(zero) == expected
    assert fault(zero, dict(stored(), familiarity_distance=[0.0, 0.0, 0.0])) == expected
    without = {key: value for key, value in stored().items() if key != "familiarity_distance"}
    no_measure = onnx_file.session_fault(Session(), without, SIZE, NAMES[:3], p_of_logits, None, TOLERANCE)
    assert no_measure is None


def test_one_check_input_beyond_the_limit_is_enough_and_one_at_the_limit_is_not():
    distances = np.asarray(stored()["familiarity_distance"])
    at_limit = Session({("familiarity_distance", None): LIMIT - distances})  # every input exactly at the limit
    record = dict(stored(), familiarity_distance=[LIMIT] * 3)
    assert fault(at_limit, record).startswith("its familiarity_distance puts none of the 3 check inputs")
    one_beyond = LIMIT - distances
    one_beyond[1] += 1.0
    record = dict(stored(), familiarity_distance=[LIMIT, LIMIT + 1.0, LIMIT])
    assert fault(Session({("familiarity_distance", 3): one_beyond, ("familiarity_distance", 1): one_beyond[:1]}),
                 record) is None  # fmt: skip


def test_a_record_without_an_output_is_of_an_earlier_version_and_a_failing_runtime_is_one_line():
    record = {key: value for key, value in stored().items() if key != "cam"}
    assert fault(Session(), record) == "its self_check holds no cam (exported by an earlier version)"
    assert fault(Session(fails=True)) == "onnxruntime failed on the model (RuntimeError: out of memory)"


def test_largest_is_nan_where_any_value_is():
    assert np.isnan(onnx_file.largest([0.1, np.nan])) and max([0.1, np.nan]) == 0.1
    assert onnx_file.largest(np.array([[0.1, 0.3], [0.2, 0.0]])) == 0.3


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("times, kept", [(0.5, True), (2.0, False)])
def test_one_check_input_off_among_the_others_is_found_by_the_largest_difference_never_a_mean(name, times, kept):
    """The last of the 3 check inputs (never in the batch-of-1 run, which would see it alone) moved by times x its
    allowance (DRIFT of its scale; p_malignant: the tolerance, its logits unchanged), the others not at all: twice
    is refused, though the mean over the 3 inputs is within; half is not. Kills a mean over the inputs in
    onnx_file.drifts or in outputs_fault's p_malignant check, which test_each_output_may_drift_by_drift_and_no_more
    lets through when the input it moves is the first (its batch-of-1 run sees it alone)."""
    allowance = TOLERANCE if name == "p_malignant" else onnx_file.DRIFT * scales(name)[2]
    shape = {"logits": (3, 2), "p_malignant": (3,), "cam": (3, 2, 2), "familiarity_distance": (3,)}[name]
    delta = np.zeros(shape)
    delta[2] = times * allowance
    assert times / 3 < 1  # the mean over the inputs would be within
    expected = {
        "p_malignant": f"its p_malignant is not what its logits and calibration give (off by {2 * TOLERANCE:.2g})"
    }.get(name, f"its outputs on the check inputs are not those stored when it was exported ({name})")
    assert fault(Session({(name, 3): delta})) == (None if kept else expected)
