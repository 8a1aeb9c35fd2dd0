"""The model: EfficientNet-B0 (or any timm backbone) with a head for the dataset's classes (benign and malignant,
or lesion types on either side), its loss, its optimizer and recipes, and how it predicts P(malignant). The model
file is skinlesion/model_file.py's (and onnx_file.py's): load_checkpoint asks it for the checked meta and weights,
builds the network and loads them strictly. torch and timm are imported inside the functions that use them, so that
`--help` and the ONNX path start in a fraction of a second.

    net, imagenet = model.build_model(pretrained=True)   # timm efficientnet_b0, a neutral 2-class head
    net, meta = model.load_checkpoint("skin_model.pth")  # checked: finite weights, valid metadata
"""

import numpy as np

from skinlesion import backbone, ensemble, familiarity, model_file, onnx_file
from skinlesion.backbone import imagenet_model
from skinlesion.dataset import SIDES
from skinlesion.messages import UserError, printable

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
    return model_file.meta_data_config(dict(cfg, image_size=image_size, mean=list(cfg["mean"]), std=list(cfg["std"])))


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


# ---------------------------------------------------------------------------- a model from its file
def p_malignant(logits, meta):
    """The calibrated P(malignant) (n,) of one view's logits: what an ONNX file's p_malignant must be for its own."""
    return predictions([logits], meta)[0]


def load_checkpoint(path, device="cpu"):
    """(model in eval mode on device, meta dict) from a checkpoint written by AItraining.py: read and checked by
    model_file, the network built for it here, its weights loaded strictly. A model with a familiarity measure has
    its arrays in meta["familiarity"] as float64 numpy (familiarity.ARRAYS)."""
    import timm

    ckpt = model_file.read_checkpoint(path)
    meta = ckpt["meta"]
    if model_file.unfinished_fault(meta):  # a resume checkpoint, an unfinished run's: never a label
        raise UserError(f"{printable(path)} is refused: {model_file.unfinished_fault(meta)}")
    name = model_file.architecture(meta)
    if not timm.is_model(name):
        raise UserError(
            f"{printable(path)} holds a {name} model, which this timm {timm.__version__} does not know; upgrade timm"
        )
    net = ensemble.network(name, len(meta["classes"]), meta.get("members", 1))  # one, or the folds' averaged
    arrays = model_file.familiarity_arrays(ckpt)
    if arrays:
        if arrays["means"].shape[1] != familiarity.feature_count(net):
            count = familiarity.feature_count(net)
            raise UserError(
                f"{printable(path)} is refused: its familiarity measure is not for {count} features; retrain it"
            )
        meta = dict(meta, familiarity=dict(meta["familiarity"], **arrays))
    return prepare_for_device(model_file.load_weights(net, ckpt, path), device).eval(), meta


def read_onnx(path):
    """onnx_file.read_onnx, its p_malignant checked against this module's prediction maths: (onnxruntime session,
    meta, None), or (None, None, the error line)."""
    return onnx_file.read_onnx(path, p_malignant)


def load_onnx(path):
    """(onnxruntime session, meta) for a file written by export_onnx.py, checked (onnx_file.load_onnx, against this
    module's prediction maths); UserError with one line otherwise."""
    return onnx_file.load_onnx(path, p_malignant)
