"""
The model: EfficientNet-B0 from timm with a benign/malignant head, its loss (CrossEntropyLoss), its optimizer
(Adam, lr 1e-4, for ImageNet weights) and the from-scratch recipe, how it predicts, and the model file: what a
.pth or .onnx file holds, how it is saved, loaded and checked (a broken one is refused, by every script).

    import model
    net, imagenet = model.build_model(pretrained=True)   # timm efficientnet_b0, 2-class head
    net, meta = model.load_checkpoint("skin_model.pth")  # checked: finite weights, valid metadata

Not a script: the training and prediction scripts import it. torch and timm are imported inside the functions
that use them, so `--help` and predict.py's ONNX path start in a fraction of a second instead of ~4 s.
"""

import json
import os
import warnings

import numpy as np

from skinlesion.cli import die, in_range, warn
from skinlesion.dataset import SIDES
from skinlesion.files import atomic_write, file_kind

# -----------------------------------------------------------------------------
MODEL_NAME = "efficientnet_b0"  # timm architecture
CLASSES = SIDES  # folder names = class indices: benign, malignant (the positive class)
BORDERLINE = 0.02  # a photo whose P(malignant) is this close to the threshold is reported as borderline
RECIPES = {  # how AItraining.py trains, by starting point; each knob is also one of its flags
    "finetune": dict(
        optimizer="adam",
        lr=1e-4,
        weight_decay=0.0,
        warmup=0.0,
        schedule="cosine",
        epochs=20,
        label_smoothing=0.1,
        drop_path=0.2,
        class_weights=True,
        patience=5,
    ),
    "scratch": dict(
        optimizer="adamw",
        lr=3e-3,
        weight_decay=0.05,
        warmup=0.05,
        schedule="cosine",
        epochs=100,
        label_smoothing=0.1,
        drop_path=0.2,
        class_weights=True,
        patience=0,
    ),
}
# -----------------------------------------------------------------------------
TTA_FLIPS = [(), (-1,), (-2,), (-2, -1)]  # test-time augmentation: the photo and its flips (axes of C, H, W)


# ---------------------------------------------------------------------------- the network
def pick_device():
    """CUDA, then Apple MPS, then CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def build_model(pretrained=True, weights_file=None, num_classes=2, drop_path=0.0):
    """(timm efficientnet_b0 with a num_classes head, whether it holds ImageNet weights). weights_file (a
    .safetensors/.bin of timm/efficientnet_b0.ra_in1k) loads offline; otherwise pretrained=True fetches the
    weights from the Hugging Face hub and, if that fails, warns once and starts from random weights."""
    import timm

    options = dict(num_classes=num_classes, drop_path_rate=drop_path)
    if weights_file:
        if not os.path.isfile(weights_file):
            die(
                f"weights file {weights_file} not found; download it with "
                "'hf download timm/efficientnet_b0.ra_in1k' or set WEIGHTS_FILE = None"
            )
        overlay = dict(file=os.path.abspath(weights_file))
        try:
            return timm.create_model(MODEL_NAME, pretrained=True, pretrained_cfg_overlay=overlay, **options), True
        except Exception as e:
            die(
                f"could not load ImageNet weights from {weights_file} ({type(e).__name__}); it must be "
                "the model.safetensors or pytorch_model.bin of timm/efficientnet_b0.ra_in1k"
            )
    if pretrained:
        try:
            return timm.create_model(MODEL_NAME, pretrained=True, **options), True
        except Exception as e:
            warn(
                f"could not fetch ImageNet weights for {MODEL_NAME} ({type(e).__name__}), training from "
                "random weights, which needs far more data. Fix: point WEIGHTS_FILE (--weights-file) at a "
                "local copy from 'hf download timm/efficientnet_b0.ra_in1k', or set PRETRAINED = False "
                "(--no-pretrained) to silence this."
            )
    return timm.create_model(MODEL_NAME, pretrained=False, **options), False


def make_criterion(label_smoothing=0.0, class_weights=None):
    import torch

    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


def make_optimizer(net, optimizer="adam", lr=RECIPES["finetune"]["lr"], weight_decay=0.0):
    """timm's optimizer factory: no weight decay on biases and normalisation layers."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(net, opt=optimizer, lr=lr, weight_decay=weight_decay)


def lr_factor(step, total, warmup, schedule):
    """Share of the peak learning rate at a step: linear warm-up over warmup * total steps, then cosine to 0
    or constant."""
    import math

    warm = round(warmup * total)
    if step < warm:
        return (step + 1) / warm
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    return 1.0


def data_config(net, image_size):
    """timm's preprocessing for the model (mean, std, interpolation, crop_pct) at image_size."""
    import timm

    cfg = timm.data.resolve_model_data_config(net)
    return dict(
        input_size=(3, image_size, image_size),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg["interpolation"],
        crop_pct=cfg["crop_pct"],
    )


def prepare_for_device(net, device):
    """Move to device in channels_last memory format (EfficientNet-B0 on 2 CPU cores: training 2.3x faster in
    bench.py, inference ~5x; also the fast layout for convolutions on GPUs)."""
    import torch

    return net.to(device, memory_format=torch.channels_last)


# ---------------------------------------------------------------------------- prediction
def malignant_probability(net, x, tta=False):
    """P(malignant) for a batch of normalised images; tta averages over TTA_FLIPS."""
    import torch

    x = x.contiguous(memory_format=torch.channels_last)
    flips = TTA_FLIPS if tta else [()]
    views = [x.flip(dims) if dims else x for dims in flips]
    malignant = CLASSES.index("malignant")
    return torch.stack([torch.softmax(net(v).float(), 1)[:, malignant] for v in views]).mean(0)


def softmax_malignant(logits):
    """P(malignant) per row of (n, 2) logits, in float64 numpy."""
    logits = np.asarray(logits, dtype=np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True))[:, CLASSES.index("malignant")]


def is_probability(p):
    """Elementwise: a finite number in [0, 1]. Anything else from a model is an error, never a label."""
    p = np.asarray(p, dtype=float)
    return np.isfinite(p) & (p >= 0) & (p <= 1)


# ---------------------------------------------------------------------------- the model file
def is_number(value, low, high):
    return not isinstance(value, bool) and in_range(value, low, high)


def meta_fault(meta):
    """What is wrong with a model file's metadata (what predict.py, evaluate.py and the web page need), or None."""
    need = ["classes", "image_size", "mean", "std", "interpolation", "crop_pct", "threshold"]
    missing = [key for key in need if key not in meta]
    if missing:
        return f"no {', '.join(missing)} in its metadata"
    if meta["classes"] != CLASSES:
        return f"it is a model for classes {meta['classes']}; this project needs {CLASSES}"
    if not (isinstance(meta["image_size"], int) and is_number(meta["image_size"], 32, 2048)):
        return f"its image_size {meta['image_size']!r} is not a whole number from 32 to 2048"
    for key, low, words in (("mean", -10, ""), ("std", 1e-6, " above 0")):
        value = meta[key]
        if not (isinstance(value, list) and len(value) == 3 and all(is_number(v, low, 10) for v in value)):
            return f"its {key} {value!r} is not three numbers{words}"
    if meta["interpolation"] not in ("bicubic", "bilinear", "nearest"):
        return f"its interpolation {meta['interpolation']!r} is not bicubic, bilinear or nearest"
    if not is_number(meta["crop_pct"], 0.05, 1):
        return f"its crop_pct {meta['crop_pct']!r} is not a number in (0, 1]"
    if not is_number(meta["threshold"], 0, 1):
        return f"its threshold {meta['threshold']!r} is not a number from 0 to 1"
    if meta.get("at_chance") not in (None, True, False):  # None: not known (no validation split)
        return f"its at_chance {meta['at_chance']!r} is not true, false or null"
    return None


def meta_data_config(meta):
    """The data config stored in a model file's meta, in the shape data_config returns."""
    size = meta["image_size"]
    return dict(
        input_size=(3, size, size),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        interpolation=meta["interpolation"],
        crop_pct=meta["crop_pct"],
    )


def checkpoint_state(net, cfg, threshold=0.5, **meta):
    """The one checkpoint format: weights plus everything needed to use them (meta_fault's keys, and
    val_metrics, val_auc_ci95, at_chance, epoch, settings, manifest_sha256 from AItraining.py)."""
    import PIL
    import timm
    import torch

    net = getattr(net, "module", net)  # unwrap DistributedDataParallel
    versions = {"torch": str(torch.__version__), "timm": timm.__version__, "pillow": PIL.__version__}
    meta = dict(
        model_name=MODEL_NAME,
        classes=list(CLASSES),
        image_size=int(cfg["input_size"][-1]),
        mean=list(cfg["mean"]),
        std=list(cfg["std"]),
        interpolation=cfg["interpolation"],
        crop_pct=float(cfg["crop_pct"]),
        threshold=float(threshold),
        **meta,
        versions=versions,
    )
    return {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "meta": meta}


def save_checkpoint(path, state):
    import torch

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def check_model_file(path, how="train one with 'python AItraining.py'"):
    """die unless the model file is there as a regular file (a named pipe would block the reader)."""
    kind = file_kind(path)
    if kind == "missing":
        die(f"model file {path} not found; {how} or pass --model PATH")
    if kind:
        die(f"model file {path} is {kind}; {how} or pass --model PATH")


def load_failure(path, error):
    """Why torch.load could not read path, as one error line."""
    if is_onnx_file(path):
        die(
            f"{path} is an ONNX model (from export_onnx.py), not a PyTorch checkpoint; pass the .pth file "
            "AItraining.py wrote (predict.py takes either: --model file.onnx)"
        )
    if "weights_only" in str(error) or "Unpickl" in type(error).__name__:
        die(
            f"refusing to load {path}: it contains Python objects that could run code "
            "(only plain weights and metadata are accepted)"
        )
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
    meta = ckpt["meta"]
    fault = meta_fault(meta)
    if not fault and meta.get("model_name") != MODEL_NAME:
        fault = f"it holds a {meta.get('model_name')} model, this project needs {MODEL_NAME}"
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
        die(
            f"{path}: the weights do not fit {MODEL_NAME} with {len(CLASSES)} classes "
            "(another architecture or class count); retrain with AItraining.py"
        )
    return net


def load_checkpoint(path, device="cpu"):
    """(model in eval mode on device, meta dict) from a checkpoint written by AItraining.py, checked."""
    import timm

    ckpt = read_checkpoint(path)
    net = load_weights(timm.create_model(MODEL_NAME, pretrained=False, num_classes=len(CLASSES)), ckpt, path)
    return prepare_for_device(net, device).eval(), ckpt["meta"]


def onnx_weight_fault(proto):
    """The first weight of an ONNX graph that holds NaN or infinite values, said as a fault, or None."""
    from onnx import numpy_helper

    for tensor in proto.graph.initializer:
        if not np.isfinite(numpy_helper.to_array(tensor).astype(float, copy=False)).all():
            return f"its weight {tensor.name} holds NaN or infinite values"
    return None


def load_onnx(path):
    """(onnxruntime session, meta) for a file written by export_onnx.py, checked as read_checkpoint checks a
    .pth (metadata, finite weights) plus its input and outputs; dies with one line on anything else."""
    import onnx
    import onnxruntime as ort

    check_model_file(path, "export one with 'python export_onnx.py'")
    try:
        proto = onnx.load(path)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        session = ort.InferenceSession(proto.SerializeToString(), providers=providers)
    except Exception as e:
        die(f"{path} is not a readable ONNX model ({type(e).__name__}); export one with export_onnx.py")
    try:
        meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    except ValueError as e:
        die(f"{path} is refused: its metadata is not valid JSON ({e}); export the model again with export_onnx.py")
    fault = meta_fault(meta) or onnx_weight_fault(proto)
    if fault:
        die(f"{path} is refused: {fault}; export the model again with export_onnx.py")
    inputs, outputs = session.get_inputs(), {o.name: o.shape for o in session.get_outputs()}
    shape, size = (inputs[0].shape if len(inputs) == 1 else []), meta["image_size"]
    if len(inputs) != 1 or len(shape) != 4 or shape[1] != 3 or inputs[0].type != "tensor(float)":
        taken = ", ".join(f"{i.name} {i.shape} {i.type}" for i in inputs)
        die(
            f"{path} takes {taken}; predict.py needs one float32 input of shape [batch, 3, size, size] "
            "(export the model with export_onnx.py)"
        )
    if shape[2:] != [size, size] or outputs.get("logits", [None])[-1:] != [len(CLASSES)]:
        die(
            f"{path} takes {shape} and gives {outputs}, its metadata says {size} px images and {len(CLASSES)} "
            "classes in 'logits'; export the model again with export_onnx.py"
        )
    return session, meta
