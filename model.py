"""The model: EfficientNet-B0 from timm with a head for the dataset's classes (benign and malignant, or lesion
types on either side), its loss, its optimizer and recipes, how it predicts P(malignant), and the model file:
what a .pth or .onnx file holds, how it is saved, loaded and checked (a broken one, or one that is not ours, is
refused by every script). torch and timm, scipy and pandas are imported inside the functions that use them (or not
at all), so that `--help` and the ONNX path start in a fraction of a second.

    net, imagenet = model.build_model(pretrained=True)   # timm efficientnet_b0, a neutral 2-class head
    net, meta = model.load_checkpoint("skin_model.pth")  # checked: finite weights, valid metadata
"""

import json
import math
import os
import warnings
from typing import NamedTuple

import numpy as np

from skinlesion import backbone, checkpoints, ensemble, familiarity, quantise, reading, schema, self_check
from skinlesion.backbone import imagenet_model
from skinlesion.dataset import SIDES
from skinlesion.files import TAG, atomic_write, file_kind
from skinlesion.flags import is_list_of
from skinlesion.messages import UserError, printable
from skinlesion.metrics import APPLIES_TO

# -----------------------------------------------------------------------------
MODEL_NAME = "efficientnet_b0"  # timm architecture
CLASSES = SIDES  # the two-class model's classes (folder names = class indices); malignant is the positive class
RECIPES = {  # how AItraining.py trains, by starting point; each knob is also one of its flags
    "finetune": dict(optimizer="adam", lr=1e-4, weight_decay=0.0, warmup=0.0, schedule="cosine", epochs=20,
                     label_smoothing=0.1, drop_path=0.2, class_weights=True, patience=5),
    "scratch": dict(optimizer="adamw", lr=3e-3, weight_decay=0.05, warmup=0.05, schedule="cosine", epochs=100,
                    label_smoothing=0.1, drop_path=0.2, class_weights=True, patience=0),
}  # fmt: skip
# -----------------------------------------------------------------------------
TTA_FLIPS = [(), (-1,), (-2,), (-2, -1)]  # test-time augmentation: the photo and its flips (axes of C, H, W)
ONNX_OUTPUTS = ("logits", "p_malignant", "cam")  # what an export gives, in order
IMAGE_SIZES = (32, 2048)  # the image sizes (px) a model may have, from and to: every IMAGE_SIZE comment says these


# ---------------------------------------------------------------------------- the network
def build_model(pretrained=True, weights_file=None, num_classes=2, drop_path=0.0, model_name=MODEL_NAME):
    """(timm model_name with a num_classes head, where its ImageNet weights came from or None; skinlesion/backbone.py
    says from where). The new head starts neutral, zero: every class equally likely (loss ln N) on any photo;
    timm's random head gives ImageNet features logits of about +-8, and Adam then spends the run shrinking the
    head instead of adapting the features."""
    import timm
    import torch

    if not timm.is_model(model_name):
        raise UserError(f"{model_name!r} is not a timm architecture; pick one of timm.list_models(), e.g. {MODEL_NAME}")

    def create(pretrained):
        options = dict(num_classes=num_classes, drop_path_rate=drop_path)
        net = timm.create_model(model_name, pretrained=pretrained, **options)
        head = net.get_classifier()
        if not backbone.pooled_linear_head(net):
            raise UserError(
                f"{model_name}'s head is not an average pool and one linear layer on its feature map, which the "
                f"evidence map and the ONNX file need; pick another timm architecture, e.g. {MODEL_NAME} or resnet50"
            )
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return net

    return imagenet_model(create, model_name, weights_file, pretrained)


def make_criterion(label_smoothing=0.0, class_weights=None):
    import torch

    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


def make_optimizer(net, optimizer="adam", lr=RECIPES["finetune"]["lr"], weight_decay=0.0):
    """timm's optimizer factory: no weight decay on biases and normalisation layers."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(net, opt=optimizer, lr=lr, weight_decay=weight_decay)


def data_config(net, image_size):
    """timm's preprocessing for the model (mean, std, interpolation, crop_pct) at image_size."""
    import timm

    cfg = timm.data.resolve_model_data_config(net)
    return meta_data_config(dict(cfg, image_size=image_size, mean=list(cfg["mean"]), std=list(cfg["std"])))


def prepare_for_device(net, device):
    """On device, channels_last (EfficientNet-B0 on 2 CPU cores: training 2.3x faster, inference ~5x)."""
    import torch

    return net.to(device, memory_format=torch.channels_last)


# ---------------------------------------------------------------------------- prediction
def malignant_mask(meta):
    """Which of the model's classes are on the malignant side (a two-class model: 'malignant')."""
    return np.array([c in meta.get("malignant_classes", ["malignant"]) for c in meta["classes"]])


def malignant_log_odds(logits, mask):
    """log(P(malignant) / P(benign)) per row of (n, classes) logits, P(malignant) being the summed probability
    of the malignant classes: exact and stable in float64 (for two classes, the logit difference)."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.logaddexp.reduce(logits[:, mask], axis=1) - np.logaddexp.reduce(logits[:, ~mask], axis=1)


def class_probabilities(logits):
    """Softmax per row, float64 (numpy's own: scipy.special takes longer to import than the ONNX path to run)."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def calibrated_probabilities(logits, meta):
    """The one calibrated distribution over the classes per row: softmax(a * logits + b * malignant) with the
    model's calibration {a, b} (none: the softmax itself); its malignant classes add up to P(malignant)."""
    fitted = meta.get("calibration") or {}
    a, b = fitted.get("a", 1.0), fitted.get("b", 0.0)
    return class_probabilities(a * np.asarray(logits, dtype=np.float64) + b * malignant_mask(meta))


def predictions(view_logits, meta):
    """(calibrated P(malignant) (n,), calibrated class probabilities (n, classes)) averaged over the views'
    logits: P(malignant) is the sum of the malignant classes' probabilities."""
    probabilities = np.mean([calibrated_probabilities(v, meta) for v in view_logits], axis=0)
    return probabilities[:, malignant_mask(meta)].sum(1), probabilities


def view_logits(net, x, tta=False):
    """The network's float64 logits for a batch of normalised images, one array per view (TTA_FLIPS with tta)."""
    import torch

    x = x.contiguous(memory_format=torch.channels_last)
    flips = TTA_FLIPS if tta else [()]
    with torch.inference_mode():
        return [net(x.flip(dims) if dims else x).double().cpu().numpy() for dims in flips]


# ---------------------------------------------------------------------------- the model file
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
    "format": Key("its format (checkpoints.FORMAT; absent: before 2)", schema.whole(1, 10**6), "AItraining.py"),
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
    "self_check": Key("outputs on self_check.inputs", schema.SELF_CHECK, "export_onnx.py", True, "export"),
    "members": Key("how many networks it averages (ensemble.py); absent: one", schema.whole(2, 20), "AItraining.py"),
    "folds": Key("the folds that chose calibration, threshold, familiarity limit", schema.FOLDS, "AItraining.py"),
}  # fmt: skip


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
    name, network = meta.get("model_name", MODEL_NAME), meta.get("network")  # before the keys: EfficientNet-B0
    if not fault and network is not None and network["architecture"] != name:
        fault = f"its network {network!r} is not {name}'s"
    calibration = meta.get("calibration")  # its shape is checked above: a fault there is said first
    old_form = not fault and calibration and calibration["a"] != 1 and calibration.get("applies_to") != APPLIES_TO
    if old_form and not classes_fault(meta) and len(meta["classes"]) > 2:
        fault = "its calibration scales the summed log-odds (an earlier version), not the type logits; retrain it"
    return fault or classes_fault(meta)


def meta_data_config(meta):
    """The data config stored in a model file's meta, in the shape timm's data config has."""
    size = meta["image_size"]
    cfg = dict(input_size=(3, size, size), mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    return dict(cfg, interpolation=meta["interpolation"], crop_pct=meta["crop_pct"])


def checkpoint_state(net, cfg, threshold=0.5, classes=CLASSES, **meta):
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
    fault = meta_fault(meta) or (unknown and f"its keys {unknown} are not in model.KEYS")
    if fault:
        raise ValueError(f"a model file must not be written so: {fault}")
    weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return {"written_by": TAG, "state_dict": weights, "meta": meta}


def save_checkpoint(path, state, kind="model"):
    """Write a checkpoint atomically, recorded as kind: "model" (what predict.py reads) or "resume checkpoint"."""
    import torch

    atomic_write(path, lambda tmp: torch.save(state, tmp), kind)


def check_model_file(path, how="train one with 'python AItraining.py'"):
    """die unless the model file is there as a regular file (a named pipe would block the reader, a link to
    /dev/zero never end) of at most checkpoints.MAX_MODEL_BYTES."""
    kind = file_kind(path)
    if kind == "missing":
        raise UserError(f"model file {printable(path)} not found; {how} or pass --model PATH")
    if kind:
        raise UserError(f"model file {printable(path)} is {kind}; {how} or pass --model PATH")
    size, most = os.path.getsize(path), checkpoints.MAX_MODEL_BYTES
    if size > most:
        raise UserError(f"model file {printable(path)} is {size:,} bytes, over the {most:,} a model file may "
            f"be; {how} or pass --model PATH")  # fmt: skip


def read_checkpoint(path):
    """The raw checkpoint dict, loaded safely (weights_only: a file that would run code is refused) and
    checked: metadata valid, weights finite. Dies with one line naming the file and the fault."""
    import torch

    check_model_file(path)
    with checkpoints.opened(path) as f:  # what was checked is what is read: a regular file, within the bound
        try:
            with warnings.catch_warnings():  # a plain pickle of another protocol warns before it is refused
                warnings.simplefilter("ignore", UserWarning)
                ckpt = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            checkpoints.load_failure(path, e)
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


def load_weights(net, ckpt, path):
    """Put a checked checkpoint's weights into net, strictly: every tensor of net and no other, each of its shape;
    die (not raise) with the counts when they do not fit it."""
    try:
        net.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError):
        name, classes = ckpt["meta"].get("model_name", MODEL_NAME), len(ckpt["meta"]["classes"])
        wanted, found = net.state_dict(), ckpt["state_dict"]
        missing, extra = len(wanted.keys() - found.keys()), len(found.keys() - wanted.keys())
        other_shape = sum(getattr(found[k], "shape", None) != wanted[k].shape for k in wanted.keys() & found.keys())
        raise UserError(
            f"{printable(path)}: the weights do not fit {name} with {classes} classes ({missing} of its tensors "
            f"missing, {extra} not its own, {other_shape} of another shape: another architecture or count)"
        ) from None
    return net


def load_checkpoint(path, device="cpu"):
    """(model in eval mode on device, meta dict) from a checkpoint written by AItraining.py, checked. A model with a
    familiarity measure has its arrays in meta["familiarity"] as float64 numpy (familiarity.ARRAYS)."""
    import timm

    ckpt = read_checkpoint(path)
    meta = ckpt["meta"]
    if checkpoints.unfinished_fault(meta):  # a resume checkpoint, an unfinished run's: never a label
        raise UserError(f"{printable(path)} is refused: {checkpoints.unfinished_fault(meta)}")
    name = meta.get("model_name", MODEL_NAME)
    if not timm.is_model(name):
        raise UserError(
            f"{printable(path)} holds a {name} model, which this timm {timm.__version__} does not know; upgrade timm"
        )
    net = ensemble.network(name, len(meta["classes"]), meta.get("members", 1))  # one, or the folds' averaged
    if meta.get("familiarity"):
        arrays = {key: value.double().numpy() for key, value in ckpt["familiarity"].items()}
        if arrays["means"].shape[1] != familiarity.feature_count(net):
            count = familiarity.feature_count(net)
            raise UserError(
                f"{printable(path)} is refused: its familiarity measure is not for {count} features; retrain it"
            )
        meta = dict(meta, familiarity=dict(meta["familiarity"], **arrays))
    return prepare_for_device(load_weights(net, ckpt, path), device).eval(), meta


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
            meta.get("model_name", MODEL_NAME),
            f"{network['convs']} convolutions, a {network['features']}-wide classifier",
        )
        return f"its graph is not {name} with {n} classes ({wanted}; it has {convs} convolutions)"
    inputs = [(i.name, i.shape, i.type) for i in session.get_inputs()]
    if len(inputs) != 1 or inputs[0][1][1:] != [3, size, size] or inputs[0][2] != "tensor(float)":
        return f"it takes {inputs}, not one float32 image [batch, 3, {size}, {size}]"
    outputs = {o.name: o.shape[1:] for o in session.get_outputs()}
    side = backbone.cam_side(size, network["stride"])
    wanted = dict(zip(ONNX_OUTPUTS, [[n], [], [side, side]]))
    if meta.get("familiarity"):  # the Mahalanobis distance to the training photos (skinlesion/familiarity.py)
        wanted["familiarity_distance"] = []
    if outputs != wanted:
        return f"its outputs (shapes after the batch) are {outputs}, not {wanted}"
    return None


def output_names(meta):
    """An export's outputs, in order: ONNX_OUTPUTS, and the familiarity distance for a model with that measure."""
    return [*ONNX_OUTPUTS, "familiarity_distance"] if meta.get("familiarity") else list(ONNX_OUTPUTS)


def self_check_fault(session, meta, tolerance=1e-4):
    """What is wrong with an ONNX file's outputs on the check inputs against those stored when it was exported (its
    self_check: skinlesion/self_check.py), or None."""
    limit = (meta.get("familiarity") or {}).get("limit")

    def own_p(logits):  # what the file's P should be: its logits through its calibration
        return predictions([logits], meta)[0]

    stored, size = meta["self_check"], meta["image_size"]
    return self_check.fault(session, stored, size, output_names(meta), own_p, limit, tolerance)


def read_onnx(path):
    """(onnxruntime session, meta, None) for a regular file written by export_onnx.py, checked as read_checkpoint
    checks a .pth (metadata, finite weights, the architecture, its input and outputs) and against its self_check;
    else (None, None, the error line). An int8 twin's verdict (quantised) is recomputed from its numbers
    (quantise.within_tolerance), never read."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:  # a regular file only, within the bound; weights in files of their own (external data) are never read
        data = reading.read_bytes(path, checkpoints.MAX_MODEL_BYTES)
    except OSError as e:
        return None, None, f"{checkpoints.unreadable_text(path, e)}; export one with export_onnx.py"
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:
        why = f"is not a readable ONNX model ({type(e).__name__}); export one with export_onnx.py"
        return None, None, f"{printable(path)} {why}"
    if any(uses_external_data(tensor) for tensor in proto.graph.initializer):
        why = "keeps its weights in files of their own (external data); export_onnx.py writes one self-contained file"
        return None, None, f"{printable(path)} is refused: it {why}"
    return checked_onnx(path, data, proto)


def checked_onnx(path, data, proto):
    """read_onnx's (session, meta, None) or (None, None, the error line) for the ONNX file read from path as data
    (bytes) and parsed as proto."""
    import onnxruntime as ort

    try:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        session = ort.InferenceSession(data, providers=providers)
    except Exception as e:
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
    fault = fault or meta_fault(meta) or onnx_fault(proto, session, meta) or meta_fault(meta, "onnx")
    fault = fault or checkpoints.unfinished_fault(meta)
    fault = fault or self_check_fault(session, meta)
    if fault:
        return None, None, f"{printable(path)} is refused: {fault}; export the model again with export_onnx.py"
    if "quantised" in meta:
        verdict = quantise.within_tolerance(meta["quantised"], bool(meta.get("familiarity")))
        meta["quantised"] = dict(meta["quantised"], within_tolerance=verdict)
    return session, meta, None


def load_onnx(path):
    """(onnxruntime session, meta) for a file written by export_onnx.py, checked (read_onnx); dies with one line
    otherwise."""
    check_model_file(path, "export one with 'python export_onnx.py'")
    session, meta, error = read_onnx(path)
    if error:
        raise UserError(error)
    return session, meta
