"""The model: EfficientNet-B0 from timm with a head for the dataset's classes (benign and malignant, or lesion
types on either side), its loss, its optimizer and recipes, how it predicts P(malignant), and the model file:
what a .pth or .onnx file holds, how it is saved, loaded and checked (a broken one, or one that is not ours, is
refused by every script). torch and timm are imported inside the functions that use them, so that `--help` and
the ONNX path start in a fraction of a second.

    net, imagenet = model.build_model(pretrained=True)   # timm efficientnet_b0, a neutral 2-class head
    net, meta = model.load_checkpoint("skin_model.pth")  # checked: finite weights, valid metadata
"""

import json
import re
import warnings

import numpy as np
from scipy.special import logsumexp, softmax

from skinlesion.calibration import calibrated
from skinlesion.cli import die, in_range, is_list_of, is_table
from skinlesion.dataset import SIDES
from skinlesion.familiarity import distances, feature_count, features
from skinlesion.files import TAG, atomic_write, file_kind, is_ours
from skinlesion.weights import imagenet_model

# -----------------------------------------------------------------------------
MODEL_NAME = "efficientnet_b0"  # timm architecture
CLASSES = SIDES  # the two-class model's classes (folder names = class indices); malignant is the positive class
BORDERLINE = 0.02  # a photo whose P(malignant) is this close to the threshold is reported as borderline
RECIPES = {  # how AItraining.py trains, by starting point; each knob is also one of its flags
    "finetune": dict(optimizer="adam", lr=1e-4, weight_decay=0.0, warmup=0.0, schedule="cosine", epochs=20,
                     label_smoothing=0.1, drop_path=0.2, class_weights=True, patience=5),
    "scratch": dict(optimizer="adamw", lr=3e-3, weight_decay=0.05, warmup=0.05, schedule="cosine", epochs=100,
                    label_smoothing=0.1, drop_path=0.2, class_weights=True, patience=0),
}  # fmt: skip
# -----------------------------------------------------------------------------
TTA_FLIPS = [(), (-1,), (-2,), (-2, -1)]  # test-time augmentation: the photo and its flips (axes of C, H, W)
ONNX_CONVS = 81  # Conv nodes in an export of EfficientNet-B0: a graph with another count is not our model


# ---------------------------------------------------------------------------- the network
def build_model(pretrained=True, weights_file=None, num_classes=2, drop_path=0.0):
    """(timm efficientnet_b0 with a num_classes head, whether it holds ImageNet weights; skinlesion/weights.py
    says where they come from). The new head starts neutral, zero: every class equally likely (loss ln N) on
    any photo; timm's random head gives ImageNet features logits of about +-8, and Adam then spends the run
    shrinking the head instead of adapting the features."""
    import timm
    import torch

    def create(pretrained, overlay):
        options = dict(num_classes=num_classes, drop_path_rate=drop_path, pretrained_cfg_overlay=overlay)
        net = timm.create_model(MODEL_NAME, pretrained=pretrained, **options)
        torch.nn.init.zeros_(net.get_classifier().weight)
        torch.nn.init.zeros_(net.get_classifier().bias)
        return net

    return imagenet_model(create, MODEL_NAME, weights_file, pretrained)


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
    return logsumexp(logits[:, mask], axis=1) - logsumexp(logits[:, ~mask], axis=1)


def class_probabilities(logits):
    """Softmax per row, float64."""
    return softmax(np.asarray(logits, dtype=np.float64), axis=1)


def predictions(view_logits, meta):
    """(calibrated P(malignant) (n,), class probabilities (n, classes)) averaged over the views' logits."""
    mask, calibration = malignant_mask(meta), meta.get("calibration")
    p = np.mean([calibrated(malignant_log_odds(v, mask), calibration) for v in view_logits], axis=0)
    return p, np.mean([class_probabilities(v) for v in view_logits], axis=0)


def view_logits(net, x, tta=False):
    """The network's float64 logits for a batch of normalised images, one array per view (TTA_FLIPS with tta)."""
    import torch

    x = x.contiguous(memory_format=torch.channels_last)
    flips = TTA_FLIPS if tta else [()]
    with torch.inference_mode():
        return [net(x.flip(dims) if dims else x).double().cpu().numpy() for dims in flips]


def familiarity_distances(net, x, meta):
    """The familiarity distance (skinlesion/familiarity.py) of each normalised image of a batch, float64, or None
    for a model without the measure (meta as load_checkpoint gives it, with the arrays)."""
    import torch

    found = meta.get("familiarity")
    if not found:
        return None
    with torch.inference_mode():
        found_features = features(net, x.contiguous(memory_format=torch.channels_last))[0]
    return distances(found_features.double().cpu().numpy(), found["means"], found["whitening"])


# ---------------------------------------------------------------------------- the model file
def classes_fault(meta):
    """What is wrong with a model file's classes and their sides, or None."""
    classes, malignant = meta["classes"], meta.get("malignant_classes")
    names = is_list_of(classes, lambda c: isinstance(c, str) and c)
    if not names or len(classes) < 2 or len(set(classes)) < len(classes):
        return f"its classes {classes!r} are not two or more different names"
    if malignant is None and classes != SIDES:
        return f"it is a model for classes {classes} with no malignant_classes; this project needs {SIDES} or both"
    if malignant is not None and not (
        is_list_of(malignant, classes.__contains__) and 0 < len(malignant) < len(classes)
    ):
        return f"its malignant_classes {malignant!r} are not some, not all, of its classes"
    return None


def meta_fault(meta):
    """What is wrong with a model file's metadata (what predict.py, evaluate.py and the web page need), or None."""
    need = ["classes", "image_size", "mean", "std", "interpolation", "crop_pct", "threshold"]
    missing = [key for key in need if key not in meta]
    calibration, ci = meta.get("calibration"), meta.get("val_auc_ci95")
    if missing:
        return f"no {', '.join(missing)} in its metadata"
    if meta.get("model_name", MODEL_NAME) != MODEL_NAME:
        return f"it holds a {meta['model_name']} model, this project needs {MODEL_NAME}"
    if not (isinstance(meta["image_size"], int) and in_range(meta["image_size"], 32, 2048)):
        return f"its image_size {meta['image_size']!r} is not a whole number from 32 to 2048"
    if not is_list_of(meta["mean"], lambda v: in_range(v, -10, 10), 3):
        return f"its mean {meta['mean']!r} is not three numbers"
    if not is_list_of(meta["std"], lambda v: in_range(v, 1e-6, 10), 3):
        return f"its std {meta['std']!r} is not three numbers above 0"
    if meta["interpolation"] not in ("bicubic", "bilinear", "nearest"):
        return f"its interpolation {meta['interpolation']!r} is not bicubic, bilinear or nearest"
    if not in_range(meta["crop_pct"], 0.05, 1):
        return f"its crop_pct {meta['crop_pct']!r} is not a number in (0, 1]"
    if not in_range(meta["threshold"], 0, 1):
        return f"its threshold {meta['threshold']!r} is not a number from 0 to 1"
    if calibration is not None and not (
        isinstance(calibration, dict)
        and in_range(calibration.get("a"), 1e-6, 1e6)
        and in_range(calibration.get("b"), -1e6, 1e6)
    ):
        return f"its calibration {calibration!r} is not a positive scale a and a shift b"
    if ci is not None and not is_list_of(ci, lambda v: in_range(v, 0, 1), 2):
        return f"its val_auc_ci95 {ci!r} is not two numbers from 0 to 1"
    bad = [key for key in ("val_metrics", "operating_point") if meta.get(key) is not None and not is_table(meta[key])]
    if bad:
        return f"its {bad[0]} {meta[bad[0]]!r} is not a table of numbers"
    if meta.get("at_chance") not in (None, True, False):  # None: not known (no validation split)
        return f"its at_chance {meta['at_chance']!r} is not true, false or null"
    return classes_fault(meta) or familiarity_fault(meta.get("familiarity"))


def familiarity_fault(found):
    """What is wrong with a model file's familiarity measure (skinlesion/familiarity.py: the limit of the distance
    and the image types it was fitted on), or None; a model without one (an earlier version) has None here."""
    if found is None:
        return None
    if not (isinstance(found, dict) and found.get("method") == "mahalanobis"):
        return "its familiarity is not a Mahalanobis distance measure"
    if not in_range(found.get("limit"), 0):
        return f"its familiarity limit {found.get('limit')!r} is not a number >= 0"
    if not (
        in_range(found.get("quantile"), 0, 1) and is_list_of(found.get("image_types"), lambda t: isinstance(t, str))
    ):
        return "its familiarity has no quantile from 0 to 1 or no list of image types"
    return None


def familiarity_arrays_fault(arrays, classes):
    """What is wrong with a checkpoint's familiarity arrays (means: classes x d, whitening: d x d, finite)."""
    import torch

    means, whitening = (arrays.get(k) if isinstance(arrays, dict) else None for k in ("means", "whitening"))
    if not (torch.is_tensor(means) and torch.is_tensor(whitening) and means.ndim == 2 and whitening.ndim == 2):
        return "its familiarity has no means and whitening matrices"
    d = means.shape[1]
    if means.shape[0] != classes or tuple(whitening.shape) != (d, d):
        return f"its familiarity means {tuple(means.shape)} and whitening {tuple(whitening.shape)} do not fit"
    if not (means.isfinite().all() and whitening.isfinite().all()):
        return "its familiarity means or whitening hold NaN or infinite values"
    return None


def meta_data_config(meta):
    """The data config stored in a model file's meta, in the shape timm's data config has."""
    size = meta["image_size"]
    cfg = dict(input_size=(3, size, size), mean=tuple(meta["mean"]), std=tuple(meta["std"]))
    return dict(cfg, interpolation=meta["interpolation"], crop_pct=meta["crop_pct"])


def checkpoint_state(net, cfg, threshold=0.5, classes=CLASSES, **meta):
    """The one checkpoint format: weights plus what is needed to use them (meta_fault's keys and what AItraining.py
    adds). TAG comes first, so that files.is_ours knows the file."""
    import PIL
    import timm
    import torch

    net = getattr(net, "module", net)  # unwrap DistributedDataParallel
    versions = {"torch": str(torch.__version__), "timm": timm.__version__, "pillow": PIL.__version__}
    meta = dict(written_by=TAG, model_name=MODEL_NAME, classes=list(classes), threshold=float(threshold), **meta)
    meta.update(image_size=int(cfg["input_size"][-1]), mean=list(cfg["mean"]), std=list(cfg["std"]))
    meta.update(interpolation=cfg["interpolation"], crop_pct=float(cfg["crop_pct"]), versions=versions)
    weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return {"written_by": TAG, "state_dict": weights, "meta": meta}


def save_checkpoint(path, state):
    import torch

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def written_by_us(path):
    """Whether a model file is ours: TAG inside, or from an earlier version (a zip whose data.pkl names state_dict,
    meta and model_name; an ONNX file with source_sha256 metadata): replaced without --overwrite."""
    import zipfile

    if is_ours(path) or is_ours(path, ours=b"source_sha256"):
        return True
    try:
        with zipfile.ZipFile(path) as z:
            data = z.read(next(name for name in z.namelist() if name.endswith("/data.pkl")))
    except Exception:  # not a zip, no data.pkl: not a checkpoint
        return False
    return all(key in data for key in (b"state_dict", b"meta", b"model_name"))


def check_model_file(path, how="train one with 'python AItraining.py'"):
    """die unless the model file is there as a regular file (a named pipe would block the reader)."""
    kind = file_kind(path)
    if kind == "missing":
        die(f"model file {path} not found; {how} or pass --model PATH")
    if kind:
        die(f"model file {path} is {kind}; {how} or pass --model PATH")


def writer_torch(path):
    """The torch version a checkpoint says wrote it (from its metadata, read as bytes), or None."""
    with open(path, "rb") as f:
        found = re.search(rb"versions.{0,40}?torch.{1,12}?(\d+\.\d+\.\d+(?:\+\w+)?)", f.read(1 << 20), re.S)
    return found.group(1).decode() if found else None


def load_failure(path, error):
    """Why torch.load could not read path, as one error line."""
    import torch

    if is_onnx_file(path):
        die(f"{path} is an ONNX model, not a PyTorch checkpoint; pass the .pth file AItraining.py wrote")
    if "weights_only" in str(error) or "Unpickl" in type(error).__name__:
        die(f"refusing to load {path}: it contains Python objects that could run code (only weights are accepted)")
    wrote = writer_torch(path)
    if wrote and wrote.split("+")[0] != torch.__version__.split("+")[0]:
        die(f"{path} was written by torch {wrote}, which this torch {torch.__version__} cannot read; install {wrote}")
    die(f"{path} is not a readable checkpoint ({type(error).__name__}); it may be truncated, retrain or copy it again")


def read_checkpoint(path):
    """The raw checkpoint dict, loaded safely (weights_only: a file that would run code is refused) and
    checked: metadata valid, weights finite. Dies with one line naming the file and the fault."""
    import torch

    check_model_file(path)
    try:
        with warnings.catch_warnings():  # a plain pickle of another protocol warns before it is refused
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        load_failure(path, e)
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict) and isinstance(ckpt.get("meta"), dict)):
        die(f"{path} is not a checkpoint written by AItraining.py (no state_dict/meta)")
    fault = meta_fault(ckpt["meta"])
    if not fault and ckpt["meta"].get("familiarity"):
        fault = familiarity_arrays_fault(ckpt.get("familiarity"), len(ckpt["meta"]["classes"]))
    if not fault:
        weights = ckpt["state_dict"].items()
        bad = [k for k, v in weights if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]
        if bad:
            fault = f"{len(bad)} weight tensor(s) hold NaN or infinite values ({bad[0]})"
    if fault:
        die(f"{path} is refused: {fault}; retrain with AItraining.py (a broken model must not classify anything)")
    return ckpt


def is_onnx_file(path):
    try:
        import onnx

        return len(onnx.load(path, load_external_data=False).graph.node) > 0
    except Exception:
        return False


def load_weights(net, ckpt, path):
    """Put a checked checkpoint's weights into net; die (not raise) when they do not fit it."""
    try:
        net.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError):
        classes = len(ckpt["meta"]["classes"])
        die(f"{path}: the weights do not fit {MODEL_NAME} with {classes} classes (another architecture or count)")
    return net


def load_checkpoint(path, device="cpu"):
    """(model in eval mode on device, meta dict) from a checkpoint written by AItraining.py, checked. A model with a
    familiarity measure has its arrays in meta["familiarity"] as float64 numpy (means, whitening)."""
    import timm

    ckpt = read_checkpoint(path)
    meta = ckpt["meta"]
    net = timm.create_model(MODEL_NAME, pretrained=False, num_classes=len(meta["classes"]))
    if meta.get("familiarity"):
        arrays = {key: value.double().numpy() for key, value in ckpt["familiarity"].items()}
        if arrays["means"].shape[1] != feature_count(net):
            die(f"{path} is refused: its familiarity measure is not for {feature_count(net)} features; retrain it")
        meta = dict(meta, familiarity=dict(meta["familiarity"], **arrays))
    return prepare_for_device(load_weights(net, ckpt, path), device).eval(), meta


def familiarity_state(means, whitening):
    """What a checkpoint keeps of its familiarity measure besides meta["familiarity"]: the arrays, float32."""
    import torch

    return {
        key: torch.as_tensor(np.asarray(v), dtype=torch.float32)
        for key, v in (("means", means), ("whitening", whitening))
    }


def onnx_fault(proto, session, meta):
    """What makes an ONNX file not one of our exports (weights, graph, input, outputs), or None."""
    from onnx import numpy_helper

    size, n = meta["image_size"], len(meta["classes"])
    for tensor in proto.graph.initializer:
        if not np.isfinite(numpy_helper.to_array(tensor).astype(float, copy=False)).all():
            return f"its weight {tensor.name} holds NaN or infinite values"
    shapes = [list(t.dims) for t in proto.graph.initializer]
    convs = sum(node.op_type == "Conv" for node in proto.graph.node)
    if convs != ONNX_CONVS or [1280, 320, 1, 1] not in shapes or [n, 1280] not in shapes:
        return f"its graph is not {MODEL_NAME} with {n} classes ({convs} convolutions; export_onnx.py writes ours)"
    inputs = [(i.name, i.shape, i.type) for i in session.get_inputs()]
    if len(inputs) != 1 or inputs[0][1][1:] != [3, size, size] or inputs[0][2] != "tensor(float)":
        return f"it takes {inputs}, not one float32 image [batch, 3, {size}, {size}]"
    outputs = {o.name: o.shape[1:] for o in session.get_outputs()}
    wanted = {"logits": [n], "p_malignant": [], "cam": [size // 32, size // 32]}
    if meta.get("familiarity"):  # the Mahalanobis distance to the training photos (skinlesion/familiarity.py)
        wanted["familiarity_distance"] = []
    if outputs != wanted:
        return f"its outputs (shapes after the batch) are {outputs}, not {wanted}"
    return None


def load_onnx(path):
    """(onnxruntime session, meta) for a file written by export_onnx.py, checked as read_checkpoint checks a
    .pth (metadata, finite weights, the architecture, its input and outputs); dies with one line otherwise."""
    import onnx
    import onnxruntime as ort

    check_model_file(path, "export one with 'python export_onnx.py'")
    try:
        proto = onnx.load(path)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        session = ort.InferenceSession(proto.SerializeToString(), providers=providers)
    except Exception as e:
        die(f"{path} is not a readable ONNX model ({type(e).__name__}); export one with export_onnx.py")
    keys = [p.key for p in proto.metadata_props]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    try:
        meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
        fault = twice and f"its metadata holds {', '.join(twice)} more than once"
    except ValueError as e:
        fault = f"its metadata is not valid JSON ({e})"
    fault = fault or meta_fault(meta) or onnx_fault(proto, session, meta)
    if fault:
        die(f"{path} is refused: {fault}; export the model again with export_onnx.py")
    return session, meta
