"""
What the scripts share: the EfficientNet-B0 classifier, its loss and optimiser, image loading and
transforms, metrics, and the one checkpoint format.

    import model
    net = model.build_model(pretrained=True)          # timm efficientnet_b0, 2-class head
    net, meta = model.load_checkpoint("skin_model.pth")

Not a script: prepare_dataset.py, AItraining.py, evaluate.py, predict.py and export_onnx.py import it.
"""
import os
import sys
import warnings

import numpy as np
from PIL import Image, ImageOps

# torch, torchvision and timm are imported inside the functions that use them: predict.py's ONNX path
# uses only the torch-free part of this file (die, load_image, preprocess) and starts in a fraction of
# a second instead of the ~4 s that importing torch + timm takes.

# -----------------------------------------------------------------------------
MODEL_NAME = "efficientnet_b0"  # timm architecture
CLASSES = ["benign", "malignant"]  # folder names = class indices; malignant is the positive class
LR = 1e-4  # Adam learning rate
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")  # what counts as an image
MAX_IMAGE_PIXELS = 200_000_000  # larger images are refused as possible decompression bombs
# -----------------------------------------------------------------------------

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit: an error, on purpose


def die(message):
    """A user's mistake: one line saying what is wrong and how to fix it, exit 1, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def add_constant_flags(parser, constants):
    """One flag per UPPER_CASE constant of a script (pass its globals()), defaults taken from the constants:
    EPOCHS -> --epochs, PRETRAINED -> --pretrained/--no-pretrained, a list -> one or more values,
    None -> a string (the word 'none' also gives None)."""
    import argparse
    none_or = lambda kind: lambda text: None if text.lower() == "none" else kind(text)
    for name, value in constants.items():
        if not name.isupper() or name.startswith("_") or callable(value) or isinstance(value, type(sys)):
            continue
        flag = "--" + name.lower().replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif isinstance(value, (list, tuple)):
            kind = type(value[0]) if value else str
            parser.add_argument(flag, nargs="+", type=kind, default=value, metavar=name)
        else:
            parser.add_argument(flag, type=none_or(str if value is None else type(value)), default=value, metavar=name)
    return parser


def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def is_image_file(path):
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTS


def load_image(path, min_side=None):
    """Open an image as upright RGB. With min_side, let Pillow's JPEG draft mode decode at a reduced
    scale that still leaves the shorter side >= min_side (much faster on multi-megapixel photos).
    Raises OSError (unreadable, truncated, not an image) or DecompressionBombError/Warning."""
    with Image.open(path) as img:
        if min_side and img.format == "JPEG":
            w, h = img.size
            scale = max(min_side / min(w, h), 1 / 8)
            img.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG: scale to 8 bit, not clip
            img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            background = Image.new("RGB", img.size, (255, 255, 255))  # flatten transparency on white
            background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
            return background
        return img.convert("RGB")


def preprocess(img, cfg):
    """The evaluation transform in numpy and Pillow alone (for onnxruntime, no torch): resize the
    shorter side to int(size / crop_pct) with the model's interpolation, centre crop, scale to [0, 1],
    normalise. Returns a float32 array of shape (3, size, size); matches eval_transform within 1e-5."""
    size = cfg["input_size"][-1]
    short = int(size / cfg["crop_pct"])  # as timm: scale_size = floor(img_size / crop_pct)
    w, h = img.size
    if w <= h:
        new_w, new_h = short, int(short * h / w)
    else:
        new_w, new_h = int(short * w / h), short
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[cfg["interpolation"]]
    img = img.resize((new_w, new_h), resample)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(cfg["mean"], dtype=np.float32)) / np.array(cfg["std"], dtype=np.float32)
    return x.transpose(2, 0, 1).copy()


def pick_device():
    """CUDA, then Apple MPS, then CPU."""
    import torch
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def build_model(pretrained=True, weights_file=None, num_classes=len(CLASSES)):
    """timm efficientnet_b0 with a num_classes head. weights_file (a .pth/.safetensors of
    timm/efficientnet_b0.ra_in1k) loads offline; otherwise pretrained=True fetches ImageNet weights
    from the Hugging Face hub and, if that fails, warns once and starts from random weights."""
    import timm
    if weights_file:
        if not os.path.isfile(weights_file):
            die(f"weights file {weights_file} not found; download it with "
                f"'hf download timm/efficientnet_b0.ra_in1k' or set WEIGHTS_FILE = None")
        try:
            return timm.create_model(MODEL_NAME, pretrained=True, num_classes=num_classes,
                                     pretrained_cfg_overlay=dict(file=os.path.abspath(weights_file)))
        except Exception as e:
            die(f"could not load ImageNet weights from {weights_file} ({type(e).__name__}); it must be "
                f"the model.safetensors or pytorch_model.bin of timm/efficientnet_b0.ra_in1k")
    if pretrained:
        try:
            return timm.create_model(MODEL_NAME, pretrained=True, num_classes=num_classes)
        except Exception as e:
            warn(f"could not fetch ImageNet weights for {MODEL_NAME} ({type(e).__name__}), training from "
                 "random weights, which needs far more data. Fix: point WEIGHTS_FILE (--weights-file) at a "
                 "local copy from 'hf download timm/efficientnet_b0.ra_in1k', or set PRETRAINED = False "
                 "(--no-pretrained) to silence this.")
    return timm.create_model(MODEL_NAME, pretrained=False, num_classes=num_classes)


def make_criterion():
    import torch.nn as nn
    return nn.CrossEntropyLoss()


def make_optimizer(net, lr=LR):
    import torch
    return torch.optim.Adam(net.parameters(), lr=lr)


def data_config(net, image_size):
    """timm's preprocessing for the model (mean, std, interpolation, crop_pct) at image_size."""
    import timm
    cfg = timm.data.resolve_model_data_config(net)
    return dict(input_size=(3, image_size, image_size), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"])


def train_transform(cfg):
    """Augmentation: random resized crop, flips (lesions have no up or left), rotation, colour jitter."""
    from torchvision import transforms
    size = cfg["input_size"][-1]
    interp = transforms.InterpolationMode(cfg["interpolation"])
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=interp),
        transforms.RandomHorizontalFlip(),
        transforms.RandomVerticalFlip(),
        transforms.RandomRotation(30, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
        transforms.ToTensor(),
        transforms.Normalize(cfg["mean"], cfg["std"]),
    ])


def eval_transform(cfg):
    """timm's evaluation transform: resize the shorter side to size / crop_pct, centre crop, normalise."""
    import timm
    return timm.data.create_transform(**cfg, is_training=False)


def prepare_for_device(net, device):
    """Move to device in channels_last memory format (EfficientNet-B0 on 2 CPU cores: training 2.3x faster
    in bench.py, inference ~5x; also the fast layout for convolutions on GPUs)."""
    import torch
    return net.to(device, memory_format=torch.channels_last)


def malignant_probability(net, x, tta=False):
    """P(malignant) for a batch of normalised images; tta averages over horizontal/vertical flips."""
    import torch
    x = x.contiguous(memory_format=torch.channels_last)
    views = [x, x.flip(3), x.flip(2), x.flip(2).flip(3)] if tta else [x]
    probs = [torch.softmax(net(v).float(), dim=1)[:, CLASSES.index("malignant")] for v in views]
    return torch.stack(probs).mean(0)


def binary_metrics(y_true, p_malignant, threshold=0.5):
    """Metrics with malignant (1) as the positive class; predicted malignant when p >= threshold."""
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 precision_score, recall_score, roc_auc_score)
    y_true = np.asarray(y_true, dtype=int)
    p = np.asarray(p_malignant, dtype=float)
    y_pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    both = len(np.unique(y_true)) == 2
    return dict(
        accuracy=float(accuracy_score(y_true, y_pred)),
        balanced_accuracy=float(balanced_accuracy_score(y_true, y_pred)) if both else float("nan"),
        precision=float(precision_score(y_true, y_pred, zero_division=0)),
        sensitivity=float(recall_score(y_true, y_pred, zero_division=0)),
        specificity=float(tn / (tn + fp)) if tn + fp else float("nan"),
        f1=float(f1_score(y_true, y_pred, zero_division=0)),
        roc_auc=float(roc_auc_score(y_true, p)) if both else float("nan"),
        tn=int(tn), fp=int(fp), fn=int(fn), tp=int(tp), threshold=float(threshold),
    )


def library_versions():
    import PIL, timm, torch
    return {"torch": str(torch.__version__), "timm": timm.__version__, "pillow": PIL.__version__,
            "numpy": str(np.__version__)}


def checkpoint_state(net, cfg, threshold=0.5, metrics=None, epoch=None, manifest_sha256=None):
    """The one checkpoint format: weights plus everything needed to use them."""
    net = getattr(net, "module", net)  # unwrap DistributedDataParallel
    meta = dict(model_name=MODEL_NAME, classes=list(CLASSES), image_size=int(cfg["input_size"][-1]),
                mean=list(cfg["mean"]), std=list(cfg["std"]), interpolation=cfg["interpolation"],
                crop_pct=float(cfg["crop_pct"]), threshold=float(threshold), val_metrics=metrics or {},
                epoch=epoch, manifest_sha256=manifest_sha256, versions=library_versions())
    return {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "meta": meta}


def meta_data_config(meta):
    """The data config stored in a checkpoint's meta, in the shape data_config returns."""
    size = meta["image_size"]
    return dict(input_size=(3, size, size), mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                interpolation=meta["interpolation"], crop_pct=meta["crop_pct"])


def save_checkpoint(path, state):
    """Atomic save: write a temporary file beside path, then rename over it, so a crash or kill
    never leaves a half-written checkpoint where a good one was."""
    import torch
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:  # Ctrl-C or a full disk mid-write: no half-written file left beside path
        if os.path.exists(tmp):
            os.remove(tmp)


def read_checkpoint(path):
    """The raw checkpoint dict, loaded safely (weights_only=True: a file that would run code is refused)."""
    import torch
    if not os.path.isfile(path):
        die(f"model file {path} not found; train one with 'python AItraining.py' or pass --model PATH")
    try:
        with warnings.catch_warnings():  # a plain pickle of another protocol warns before it is refused
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights_only" in str(e) or "Unpickl" in type(e).__name__:
            die(f"refusing to load {path}: it contains Python objects that could run code "
                "(only plain weights and metadata are accepted)")
        die(f"{path} is not a readable checkpoint ({type(e).__name__}); it may be truncated, retrain or copy it again")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not isinstance(ckpt.get("meta"), dict):
        die(f"{path} is not a checkpoint written by AItraining.py (no state_dict/meta)")
    return ckpt


def load_weights(net, ckpt, path):
    """Put a checkpoint's weights into net (efficientnet_b0 for CLASSES); die on another architecture,
    class list or incomplete metadata instead of raising."""
    meta = ckpt["meta"]
    if meta.get("model_name") != MODEL_NAME or list(meta.get("classes") or []) != CLASSES:
        die(f"{path} holds a {meta.get('model_name')} model for classes {meta.get('classes')}; "
            f"this project needs {MODEL_NAME} for {CLASSES}")
    missing = [k for k in ("image_size", "mean", "std", "interpolation", "crop_pct", "threshold") if k not in meta]
    if missing:
        die(f"{path} has no {', '.join(missing)} in its metadata; retrain with AItraining.py")
    try:
        net.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError):
        die(f"{path}: the weights do not fit {MODEL_NAME} with {len(CLASSES)} classes "
            "(another architecture or class count); retrain with AItraining.py")
    return net


def load_checkpoint(path, device="cpu"):
    """(model in eval mode on device, meta dict) from a checkpoint written by AItraining.py."""
    import timm
    ckpt = read_checkpoint(path)
    net = load_weights(timm.create_model(MODEL_NAME, pretrained=False, num_classes=len(CLASSES)), ckpt, path)
    return prepare_for_device(net, device).eval(), ckpt["meta"]
