"""The model file: what a .pth holds (KEYS, the table of its metadata, also the ONNX file's and the page's), its
format version, how it is written (once, atomically) and read back checked: a broken file, one that is not ours, or
an unfinished run's is refused in one line naming it. The network itself is model.py's: model.load_checkpoint builds
it and puts the weights read here into it (load_weights). The ONNX side: skinlesion/onnx_file.py.

    state = model_file.checkpoint_state(net, cfg, threshold, **meta)   # checked before anything is written
    model_file.save_checkpoint("skin_model_last.pth", state, "resume checkpoint")
    ckpt = model_file.read_checkpoint("skin_model.pth")              # {"state_dict", "meta", ...}, checked
"""

import math
import os
import re
import warnings
import zipfile
from typing import NamedTuple

from skinlesion import backbone, familiarity, reading, schema
from skinlesion.dataset import SIDES
from skinlesion.files import TAG, atomic_write, file_kind
from skinlesion.flags import is_list_of
from skinlesion.messages import UserError, printable
from skinlesion.metrics import APPLIES_TO

MAX_MODEL_BYTES = 2_000_000_000  # the largest model file read (EfficientNet-B0's: 21 MB; an ONNX file: 2 GB at most)
FORMAT = 2  # the model file's format (its meta "format"): from 2 a finished run's file always holds its familiarity
FIRST_ARCHITECTURE = "efficientnet_b0"  # the network of a file from before model_name was one of its keys
IMAGE_SIZES = (32, 2048)  # the image sizes (px) a model may have, from and to: every IMAGE_SIZE comment says these
ONNX_OUTPUTS = ("logits", "p_malignant", "cam")  # what an export gives, in order


# ---------------------------------------------------------------------------- the table of its keys
class Key(NamedTuple):
    holds: str  # what the value is
    shape: schema.Shape  # how it is checked when a model file is loaded (and before one is saved)
    writer: str  # who writes it
    required: bool = False  # every model file holds it (else: only some, e.g. those of a finished run)
    onnx: str = "copied"  # "copied" into the ONNX metadata, "left out" (the card carries it), "export" (written there)
    page: bool = False  # in the page's model.json (serve_web.py)


RUN_SETTINGS = {  # what a run keeps for --resume (AItraining.py's SETTINGS): the flags it restores, by shape
    "recipe": schema.one_of("finetune", "scratch"), "why": schema.text(), "optimizer": schema.one_of("adam", "adamw"),
    "lr": schema.number(1e-12, math.inf), "weight_decay": schema.number(0, math.inf),
    "warmup": schema.number(0, 0.99), "schedule": schema.one_of("cosine", "constant"),
    "epochs": schema.whole(1, 10**6), "label_smoothing": schema.number(0, 0.99), "drop_path": schema.number(0, 0.99),
    "class_weights": schema.BOOLEAN, "patience": schema.whole(0, 10**6), "batch_size": schema.whole(1, 10**5),
    "image_size": schema.whole(*IMAGE_SIZES), "seed": schema.whole(0, 2**32 - 1), "target_sensitivity": schema.FRACTION,
    "amp": schema.BOOLEAN, "run": schema.text(), "model_name": schema.ARCHITECTURE, "folds": schema.whole(1, 20),
    "deploy": schema.one_of("refit", "ensemble"),
}  # fmt: skip
SINCE = ("model_name", "folds", "deploy")  # settings files from before them lack
RUN_SETTINGS_SHAPE = schema.record(
    {k: v for k, v in RUN_SETTINGS.items() if k not in SINCE}, {k: RUN_SETTINGS[k] for k in SINCE}
)
OUTPUTS = schema.one_of(list(ONNX_OUTPUTS), [*ONNX_OUTPUTS, "familiarity_distance"])  # an export's, in order
KEYS = {  # the model file's metadata: every key a .pth or .onnx may hold; any other is ignored and never copied
    "written_by": Key("files.TAG: a model file of ours", schema.text(), "checkpoint_state"),
    "format": Key("its format (model_file.FORMAT; absent: before 2)", schema.whole(1, 10**6), "AItraining.py"),
    "model_name": Key("the timm architecture", schema.ARCHITECTURE, "checkpoint_state"),
    "network": Key("its features, stride and convolutions (network_shape)", schema.NETWORK, "checkpoint_state"),
    "classes": Key("the class folders, in index order", schema.NAMES, "AItraining.py", True, page=True),
    "malignant_classes": Key("the classes on the malignant side", schema.NAMES, "AItraining.py", page=True),
    "class_names": Key("each class's label value in the export", schema.NAMES, "AItraining.py", page=True),
    "image_size": Key("the network's input side in px", schema.whole(*IMAGE_SIZES), "checkpoint_state", True,
                      page=True),
    "mean": Key("normalisation mean", schema.list_of(schema.number(-10, 10), 3), "checkpoint_state", True, page=True),
    "std": Key("normalisation std", schema.list_of(schema.number(1e-6, 10), 3), "checkpoint_state", True, page=True),
    "interpolation": Key("the resize filter", schema.one_of("bicubic", "bilinear", "nearest"), "checkpoint_state",
                         True, page=True),
    "crop_pct": Key("the centre crop's share of the shorter side", schema.number(0.05, 1), "checkpoint_state", True,
                    page=True),
    "threshold": Key("P(malignant) from which a photo is called malignant", schema.FRACTION, "AItraining.py", True,
                     page=True),
    "calibration": Key("the scaling of the class logits", schema.nullable(schema.CALIBRATION), "AItraining.py",
                       page=True),
    "operating_point": Key("the threshold's sensitivity, specificity", schema.OPERATING_POINT, "AItraining.py",
                           page=True),
    "val_metrics": Key("validation metrics at the threshold", schema.table_of(schema.ANY_NUMBER), "AItraining.py"),
    "val_auc_ci95": Key("validation ROC-AUC 95% interval", schema.list_of(schema.FRACTION, 2), "AItraining.py",
                        page=True),
    "at_chance": Key("that interval holds 0.5 (null: unknown)", schema.nullable(schema.BOOLEAN), "AItraining.py",
                     page=True),
    "epoch": Key("the epoch the weights are from", schema.whole(0, 10**6), "AItraining.py"),
    "imagenet": Key("where its starting weights came from (backbone.py)", schema.STARTING_WEIGHTS, "AItraining.py"),
    "manifest_sha256": Key("the dataset's manifest.csv", schema.nullable(schema.SHA256), "AItraining.py"),
    "versions": Key("torch, timm, pillow", schema.table_of(schema.text(100)), "checkpoint_state"),
    "settings": Key("the run's settings (model_name: since any backbone)", RUN_SETTINGS_SHAPE, "AItraining.py",
                    onnx="left out"),
    "data": Key("the training data, for the card", schema.DATA, "AItraining.py", onnx="left out"),
    "source_checkpoint": Key("the .pth it was exported from", schema.text(), "export_onnx.py", True, "export"),
    "source_sha256": Key("that file's SHA-256", schema.SHA256, "export_onnx.py", True, "export"),
    "outputs": Key("the graph's outputs", OUTPUTS, "export_onnx.py", True, "export"),
    "exporter": Key("how it was exported", schema.text(), "export_onnx.py", True, "export"),
    "card_summary": Key("the card in four texts", schema.SUMMARY, "export_onnx.py", True, "export", page=True),
    "prior_malignant": Key("the training photos' share of malignant ones (what P assumes)",
                           schema.number(1e-6, 1 - 1e-6), "AItraining.py", page=True),
    "val_types": Key("the types' validation results with 95% intervals", schema.TYPES_RESULTS, "AItraining.py"),
    "familiarity": Key("how far a photo may lie from the training photos (skinlesion/familiarity.py)",
                       schema.FAMILIARITY, "AItraining.py", page=True),
    "quantised": Key("an int8 twin's comparison with its full model", schema.QUANTISED, "export_onnx.py", False,
                     "export", page=True),
    "self_check": Key("outputs on onnx_file.check_inputs", schema.SELF_CHECK, "export_onnx.py", True, "export"),
    "members": Key("how many networks it averages (ensemble.py); absent: one", schema.whole(2, 20), "AItraining.py"),
    "folds": Key("the folds that chose calibration, threshold, familiarity limit", schema.FOLDS, "AItraining.py"),
}  # fmt: skip


# ---------------------------------------------------------------------------- its metadata checked
def architecture(meta):
    """The timm architecture a model file's meta names (a file from before the key: FIRST_ARCHITECTURE)."""
    return meta.get("model_name", FIRST_ARCHITECTURE)


def classes_fault(meta):
    """What is wrong with a model file's classes, their sides and names (shapes already checked), or None."""
    classes, malignant, names = meta["classes"], meta.get("malignant_classes"), meta.get("class_names")
    if len(classes) < 2 or len(set(classes)) < len(classes):
        return f"its classes {classes!r} are not two or more different names"
    if malignant is None and classes != SIDES:
        return f"it is a model for classes {classes} with no malignant_classes; this project needs {SIDES} or both"
    if malignant is not None and not (
        is_list_of(malignant, classes.__contains__) and 0 < len(malignant) < len(classes)
    ):
        return f"its malignant_classes {malignant!r} are not some, not all, of its classes"
    if names is not None and len(names) != len(classes):
        return f"its class_names {names!r} are not one name per class ({len(classes)})"
    return None


def meta_fault(meta, kind="pth"):
    """What is wrong with a model file's metadata, or None: every key of KEYS it holds has its shape, the keys
    every model file holds (and, kind "onnx", those export_onnx.py writes) are there, and they agree."""
    if not isinstance(meta, dict):
        return "its metadata is not a table"
    need = [name for name, key in KEYS.items() if key.required and (key.onnx != "export" or kind == "onnx")]
    missing = [name for name in need if name not in meta]
    if missing:
        return f"no {', '.join(missing)} in its metadata"
    faults = (schema.fault(key.shape, name, meta[name]) for name, key in KEYS.items() if name in meta)
    fault = next(filter(None, faults), None)
    name, network = architecture(meta), meta.get("network")
    if not fault and network is not None and network["architecture"] != name:
        fault = f"its network {network!r} is not {name}'s"
    calibration = meta.get("calibration")  # its shape is checked above: a fault there is said first
    old_form = not fault and calibration and calibration["a"] != 1 and calibration.get("applies_to") != APPLIES_TO
    if old_form and not classes_fault(meta) and len(meta["classes"]) > 2:
        fault = "its calibration scales the summed log-odds (an earlier version), not the type logits; retrain it"
    return fault or classes_fault(meta)


def unfinished_fault(meta):
    """Why a model file whose keys are sound must not classify, or None: from FORMAT 2 a finished run's file always
    holds its familiarity measure, so one without it is a resume checkpoint, or a run's that did not finish (an
    earlier version wrote the model before the measure). Files from before FORMAT 2 keep their behaviour."""
    if meta.get("format", 1) >= 2 and not meta.get("familiarity"):
        return (
            "it has no familiarity measure, which every finished model file of its format holds: it is a resume "
            "checkpoint, or its run did not finish; finish the run with 'python AItraining.py --resume'"
        )
    return None


def meta_data_config(meta):
    """The data config stored in a model file's meta, in the shape timm's data config has."""
    size = meta["image_size"]
    cfg = dict(input_size=(3, size, size), mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    return dict(cfg, interpolation=meta["interpolation"], crop_pct=meta["crop_pct"])


# ---------------------------------------------------------------------------- writing one
def checkpoint_state(net, cfg, threshold=0.5, classes=SIDES, **meta):
    """The one checkpoint format: weights plus what is needed to use them (the keys of KEYS: meta_fault's check
    runs here too, so a file that would be refused is never written). TAG comes first: a reader can tell the file
    (the proof that we wrote it is the ledger's)."""
    import PIL
    import timm
    import torch

    net = getattr(net, "module", net)  # unwrap DistributedDataParallel
    versions = {"torch": str(torch.__version__), "timm": timm.__version__, "pillow": PIL.__version__}
    shape = backbone.network_shape(net)
    meta = dict(written_by=TAG, model_name=shape["architecture"], network=shape, classes=list(classes), **meta)
    meta["threshold"] = float(threshold)
    meta.update(image_size=int(cfg["input_size"][-1]), mean=list(cfg["mean"]), std=list(cfg["std"]))
    meta.update(interpolation=cfg["interpolation"], crop_pct=float(cfg["crop_pct"]), versions=versions)
    unknown = [key for key in meta if key not in KEYS or KEYS[key].onnx == "export"]
    fault = meta_fault(meta) or (unknown and f"its keys {unknown} are not in model_file.KEYS")
    if fault:
        raise ValueError(f"a model file must not be written so: {fault}")
    weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return {"written_by": TAG, "state_dict": weights, "meta": meta}


def save_checkpoint(path, state, kind="model"):
    """Write a checkpoint atomically, recorded as kind: "model" (what predict.py reads) or "resume checkpoint"."""
    import torch

    atomic_write(path, lambda tmp: torch.save(state, tmp), kind)


def write_finished(state, path, card_path):
    """Write a finished run's model file once, whole: its card first (card.write_card), naming the SHA-256 of the
    bytes about to be written, then the file atomically (a reader sees it whole or the previous one). A state that
    lacks its familiarity measure, or whose measure does not fit, is never written."""
    import hashlib
    import io

    import torch

    from skinlesion import card

    fault = unfinished_fault(state["meta"]) or familiarity.arrays_fault(
        state["familiarity"], len(state["meta"]["classes"])
    )
    if fault:
        raise ValueError(f"a model file must not be written so: {fault}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    card.write_card(card_path, state["meta"], os.path.basename(path), model_sha256=hashlib.sha256(data).hexdigest())

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write, "model")


# ---------------------------------------------------------------------------- reading one back
def check_model_file(path, how="train one with 'python AItraining.py'"):
    """Raise UserError unless the model file is there as a regular file (a named pipe would block the reader, a link
    to /dev/zero never end) of at most MAX_MODEL_BYTES."""
    kind = file_kind(path)
    if kind == "missing":
        raise UserError(f"model file {printable(path)} not found; {how} or pass --model PATH")
    if kind:
        raise UserError(f"model file {printable(path)} is {kind}; {how} or pass --model PATH")
    size, most = os.path.getsize(path), MAX_MODEL_BYTES
    if size > most:
        raise UserError(f"model file {printable(path)} is {size:,} bytes, over the {most:,} a model file may "
            f"be; {how} or pass --model PATH")  # fmt: skip


def unreadable_text(path, error):
    """Why the model file at path was not read (an OSError of reading.open_regular), in words naming it."""
    if isinstance(error, reading.Unreadable):
        return f"model file {error}"
    return f"model file {printable(path)} cannot be read ({error.strerror or error})"


def opened(path):
    """The model file at path opened to read (reading.open_regular: a regular file of at most MAX_MODEL_BYTES,
    checked again once open); UserError naming it otherwise."""
    try:
        return reading.open_regular(path, MAX_MODEL_BYTES)
    except OSError as e:
        raise UserError(f"{unreadable_text(path, e)}; pass the model file AItraining.py wrote") from None


def read_checkpoint(path):
    """The raw checkpoint dict, loaded safely (weights_only: a file that would run code is refused) and
    checked: metadata valid, weights finite. UserError with one line naming the file and the fault otherwise."""
    import torch

    check_model_file(path)
    with opened(path) as f:  # what was checked is what is read: a regular file, within the bound
        try:
            with warnings.catch_warnings():  # a plain pickle of another protocol warns before it is refused
                warnings.simplefilter("ignore", UserWarning)
                ckpt = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # torch's own errors, whatever they are; nothing here raises UserError
            load_failure(path, e)
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) and isinstance(ckpt.get("meta"), dict)):
        raise UserError(f"{printable(path)} is not a checkpoint written by AItraining.py (no state_dict/meta)")
    fault = meta_fault(ckpt["meta"])
    if not fault and ckpt["meta"].get("familiarity"):
        fault = familiarity.arrays_fault(ckpt.get("familiarity"), len(ckpt["meta"]["classes"]))
    if not fault:
        weights = ckpt["state_dict"].items()
        bad = [k for k, v in weights if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]
        if bad:
            fault = f"{len(bad)} weight tensor(s) hold NaN or infinite values ({bad[0]})"
    if fault:
        raise UserError(
            f"{printable(path)} is refused: {fault}; retrain with AItraining.py (a broken model must not classify "
            "anything)"
        )
    return ckpt


def load_failure(path, error):
    """Why torch.load could not read path, raised as one error line."""
    import torch

    if is_onnx_file(path):
        raise UserError(
            f"{printable(path)} is an ONNX model, not a PyTorch checkpoint; pass the .pth file AItraining.py wrote"
        )
    if "weights_only" in str(error) or "Unpickl" in type(error).__name__:
        raise UserError(
            f"refusing to load {printable(path)}: it contains Python objects that could run code (only weights are "
            "accepted)"
        )
    wrote = writer_torch(path)
    if wrote and wrote.split("+")[0] != torch.__version__.split("+")[0]:
        raise UserError(
            f"{printable(path)} was written by torch {wrote}, which this torch {torch.__version__} cannot read; "
            f"install {wrote}"
        )
    raise UserError(
        f"{printable(path)} is not a readable checkpoint ({type(error).__name__}); it may be truncated, retrain or "
        "copy it again"
    )


def writer_torch(path):
    """The torch version a checkpoint says wrote it (from its metadata, read as bytes), or None."""
    with reading.open_regular(path) as f:
        found = re.search(rb"versions.{0,40}?torch.{1,12}?(\d+\.\d+\.\d+(?:\+\w+)?)", f.read(1 << 20), re.S)
    return found.group(1).decode() if found else None


def is_onnx_file(path):
    """Whether path is a regular file of at most MAX_MODEL_BYTES that parses as an ONNX graph (its external data,
    if it names any, is never read)."""
    try:
        import onnx

        return len(onnx.load_model_from_string(reading.read_bytes(path, MAX_MODEL_BYTES)).graph.node) > 0
    except Exception:  # anything that is not a readable ONNX graph: not one
        return False


def is_onnx(path):
    """By name or by content (a PyTorch checkpoint is a zip file; an ONNX file renamed .pth is not)."""
    if path.lower().endswith(".onnx"):
        return True
    return os.path.isfile(path) and not zipfile.is_zipfile(path) and is_onnx_file(path)


def load_weights(net, ckpt, path):
    """Put a checked checkpoint's weights into net (the network model.py built for it), strictly: every tensor of
    net and no other, each of its shape; UserError with the counts when they do not fit it."""
    try:
        net.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError):
        name, classes = architecture(ckpt["meta"]), len(ckpt["meta"]["classes"])
        wanted, found = net.state_dict(), ckpt["state_dict"]
        missing, extra = len(wanted.keys() - found.keys()), len(found.keys() - wanted.keys())
        other_shape = sum(getattr(found[k], "shape", None) != wanted[k].shape for k in wanted.keys() & found.keys())
        raise UserError(
            f"{printable(path)}: the weights do not fit {name} with {classes} classes ({missing} of its tensors "
            f"missing, {extra} not its own, {other_shape} of another shape: another architecture or count)"
        ) from None
    return net


def familiarity_arrays(ckpt):
    """A checked checkpoint's familiarity arrays as float64 numpy (familiarity.ARRAYS), {} for a file without."""
    if not ckpt["meta"].get("familiarity"):
        return {}
    return {key: value.double().numpy() for key, value in ckpt["familiarity"].items()}
