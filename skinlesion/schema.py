"""Shapes of the values a model file holds (its metadata, read back from a .pth or an ONNX file): each shape
says what a value must look like, so that a file that passes its checks cannot crash a script later, and no
string in it can forge a line on a terminal or a card (printable, bounded in length).

    shape = record({"a": number(1e-6, 1e6)}, optional={"note": text()})
    fault(shape, "calibration", {"a": -1})  # "its calibration.a -1 is not a number from 1e-06 to 1e+06"

A shape is (test, wanted): test(value) gives None when the value fits, else the fault (where inside the value
it lies and what it is); wanted says in words what would fit. Torch-free."""

import json
import re
from collections.abc import Callable
from typing import NamedTuple

from skinlesion.flags import in_range
from skinlesion.messages import printable

MAX_TEXT = 500  # longest string a model file may hold (a class name, an attribution, a summary line)
MAX_ITEMS = 10_000  # longest list or table
MAX_NAME = 100  # longest class name (a label value prepare_dataset.py accepts, a model file holds)


class Shape(NamedTuple):
    test: Callable  # value -> None, or (where, value, wanted) of the first part that does not fit
    wanted: str


def simple(ok, wanted):
    """A shape whose value fits when ok(value)."""
    return Shape(lambda value: None if ok(value) else ("", value, wanted), wanted)


def number(low, high):
    return simple(lambda v: in_range(v, low, high), f"a number from {low:g} to {high:g}")


def whole(low, high):
    return simple(lambda v: isinstance(v, int) and in_range(v, low, high), f"a whole number from {low} to {high}")


def is_text(value, most=MAX_TEXT):
    """Whether value is a printable string (no control, format or line-separator characters) of 1 to most
    characters: what can be shown on one line."""
    return isinstance(value, str) and 0 < len(value) <= most and value.isprintable()


def as_text(value, most=MAX_TEXT):
    """A value read from a data file as the text a model file may hold: printable (messages.printable) and at most
    most characters (cut); '' stays ''."""
    return printable(value)[:most]


def text(most=MAX_TEXT):
    return simple(lambda v: is_text(v, most), f"a printable text of 1 to {most} characters")


def one_of(*values):
    words = [value if isinstance(value, str) else json.dumps(value) for value in values]
    wanted = ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
    return simple(lambda v: any(v == x and type(v) is type(x) for x in values), wanted)


def nullable(shape):
    wanted = shape.wanted + " or null"

    def test(value):
        found = None if value is None else shape.test(value)
        if found and found[0] == "" and found[2] == shape.wanted:  # the value itself, not a part or a missing key
            return "", value, wanted
        return found

    return Shape(test, wanted)


BOOLEAN = one_of(True, False)
SHA256 = simple(lambda v: isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v) is not None, "64 hexadecimal digits")


def inside(where, found):
    """A fault found inside a part, named from the outside in: calibration.a, data.counts['train']."""
    if found is None:
        return None
    inner, value, wanted = found
    return where + inner, value, wanted


def list_of(shape, length=None, most=MAX_ITEMS):
    counted = f"{length}" if length is not None else f"up to {most}"
    wanted = f"a list of {counted} items, each {shape.wanted}"

    def test(value):
        if not isinstance(value, list) or len(value) > most or length not in (None, len(value)):
            return "", value, wanted
        return next(filter(None, (inside(f"[{i}]", shape.test(v)) for i, v in enumerate(value))), None)

    return Shape(test, wanted)


def table_of(shape, most=MAX_ITEMS):
    """A dict of text keys (printable, bounded) to values of one shape: counts per class, metrics by name."""
    wanted = f"a table of up to {most} named items, each {shape.wanted}"

    def test(value):
        if not isinstance(value, dict) or len(value) > most or not all(is_text(k) for k in value):
            return "", value, wanted
        return next(filter(None, (inside(f"[{k!r}]", shape.test(v)) for k, v in value.items())), None)

    return Shape(test, wanted)


def record(required, optional=None, others=False):
    """A dict with the required keys, perhaps the optional ones, each of its shape; others: other keys are allowed
    (and not read), else refused."""
    optional = optional or {}
    wanted = f"a table with {', '.join(required) or 'no required keys'}"

    def test(value):
        if not isinstance(value, dict):
            return "", value, wanted
        missing = [key for key in required if key not in value]
        if missing:
            return "", value, f"a table with {', '.join(missing)} (missing)"
        extra = [key for key in value if key not in required and key not in optional]
        if extra and not others:
            return "", value, f"a table without {', '.join(map(str, extra))} (not known)"
        shapes = {**optional, **required}
        found = (inside(f".{k}", shapes[k].test(v)) for k, v in value.items() if k in shapes)
        return next(filter(None, found), None)

    return Shape(test, wanted)


def fault(shape, name, value):
    """'its NAME[.where] VALUE is not WANTED' (the value shortened), or None where the value fits."""
    found = shape.test(value)
    if found is None:
        return None
    where, bad, wanted = found
    shown = repr(bad)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"its {name}{where} {shown} is not {wanted}"


# ---------------------------------------------------------------------------- the model file's values (model_file.KEYS)
def is_starting_weights(value):
    """Whether value is what backbone.imagenet_model returns: {source: hub id} or {file: name, sha256: hex}."""
    if not isinstance(value, dict) or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in value.values()):
        return False
    return set(value) == {"source"} or (
        set(value) == {"file", "sha256"} and re.fullmatch(r"[0-9a-f]{64}", value["sha256"])
    )


ANY_NUMBER = simple(in_range, "a finite number")
FRACTION, COUNT, TEXTS = number(0, 1), whole(0, 10**9), list_of(text())
ARCHITECTURE = simple(lambda v: isinstance(v, str) and re.fullmatch(r"[a-z0-9_]{1,64}", v), "a timm name")
NETWORK = record({"architecture": ARCHITECTURE, **{k: whole(1, 10**5) for k in ("features", "stride", "convs")}})
STARTING_WEIGHTS = simple(  # backbone.imagenet_model's record; true or false in files from before it
    lambda v: v in (None, True, False) or is_starting_weights(v), "true, false or where the weights came from"
)
DATA = record({}, dict(  # what the card says of the training data (dataset.data_summary)
    source=text(), counts=table_of(table_of(COUNT)), grouping=text(),
    factors=table_of(table_of(table_of(COUNT))), attributions=table_of(COUNT),
    licences=table_of(COUNT), label_column=text(), synthetic=BOOLEAN), others=True)  # fmt: skip
CALIBRATION = record(dict(  # metrics.fit_calibration (applies_to: since type logits are scaled; before, log-odds)
    method=one_of("temperature", "platt", "none"), a=number(1e-6, 1e6), b=number(-1e6, 1e6),
    val_log_loss_before=ANY_NUMBER, val_log_loss_after=ANY_NUMBER, val_ece_before=FRACTION, val_ece_after=FRACTION),
    dict(cv_log_loss=table_of(nullable(ANY_NUMBER)), applies_to=one_of("logits")))  # fmt: skip
INTERVAL = list_of(nullable(FRACTION), 2)  # a 95% interval (null ends: a type without photos)
TYPES_RESULTS = record(dict(  # metrics.types_with_intervals: balanced accuracy, each type's sensitivity, 95% intervals
    balanced_accuracy=nullable(FRACTION), balanced_accuracy_ci95=INTERVAL, chance=FRACTION,
    types=table_of(record(dict(sensitivity=nullable(FRACTION), sensitivity_ci95=INTERVAL, photos=COUNT)))))  # fmt: skip
OPERATING_POINT = record(dict(  # metrics.operating_point
    target_sensitivity=FRACTION, threshold=FRACTION, sensitivity=FRACTION, specificity=FRACTION,
    sensitivity_ci95=list_of(FRACTION, 2), specificity_ci95=list_of(FRACTION, 2)),
    dict(n_malignant=COUNT, n_benign=COUNT))  # fmt: skip
LONG = text(4000)
SUMMARY = record(dict(trained_on=LONG, how_well=LONG, intended_use=LONG, limits=TEXTS), dict(
    tested=nullable(LONG), externals=list_of(LONG),  # the test's and external data sets' figures, in words
    test_point=record(dict(sensitivity=FRACTION, specificity=FRACTION))))  # fmt: skip
SELF_CHECK = record(dict(  # export_onnx.py: the file's outputs on check_inputs, stored when it was exported
    inputs=whole(1, 16), logits=list_of(list_of(ANY_NUMBER, most=1000), most=16),
    p_malignant=list_of(FRACTION, most=16)),
    dict(cam=list_of(list_of(list_of(ANY_NUMBER, most=2048), most=2048), most=16),
         familiarity_distance=list_of(ANY_NUMBER, most=16)))  # fmt: skip
NAMES = list_of(text(MAX_NAME), most=1000)
QUANTISED = record(dict(  # export_onnx.py's int8 twin: quantise.comparison, the full model it was made from (the
    # familiarity band: twins of the static int8 quantiser, refused now; the mean P difference: the weight-only ones)
    photos=whole(1, 10**7), max_p_difference=FRACTION, label_changes=COUNT, label_changes_outside_band=COUNT,
    roc_auc_full=nullable(FRACTION), roc_auc_int8=nullable(FRACTION), max_auc_drop=FRACTION,
    within_tolerance=BOOLEAN, from_sha256=SHA256, photos_from=text()),
    dict(familiar_to_unfamiliar=COUNT, unfamiliar_to_familiar=COUNT, familiarity_flips_outside_band=COUNT,
         familiarity_band=FRACTION, max_distance_change=nullable(number(0, 1e12)), mean_p_difference=FRACTION,
         max_p_allowed=FRACTION, int8_depths=COUNT, depths=COUNT))  # fmt: skip
FAMILIARITY = record(dict(  # familiarity.summary: the limit of the distance, how it was chosen, on what photos
    method=one_of("mahalanobis", "mahalanobis+exposure"), limit=number(0, 1e12), quantile=FRACTION,
    image_types=list_of(text()), val_within=FRACTION, n_val=COUNT),
    dict(exposed_to=table_of(COUNT)))  # fmt: skip
FOLDS = record(dict(  # a run with folds (skinlesion/folds.py): what the card says of them
    k=whole(2, 20), photos=COUNT, deployed=one_of("refit", "ensemble"),
    epochs=list_of(whole(1, 10**6), most=20)), dict(refit_epochs=whole(1, 10**6)))  # fmt: skip
