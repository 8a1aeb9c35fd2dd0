"""
Classify skin-lesion photos as benign or malignant with the model AItraining.py trained.

    python predict.py photo.jpg                          # first line: "Prediction: benign" or "Prediction: malignant"
    python predict.py photos/ --csv predictions.csv      # every image under a folder, one line each, and a CSV
    python predict.py a.jpg b.png --tta                  # average P(malignant) over 4 flips of each photo
    python predict.py photo.jpg --explain                # also save photo_gradcam.png: where the model looked
    python predict.py photo.jpg --model skin_model.onnx  # onnxruntime (export_onnx.py): no torch needed

A photo is called malignant when P(malignant) >= the threshold AItraining.py chose on the validation set
(stored in the model file; --threshold overrides it). Folders are searched recursively for files ending in
model.IMAGE_EXTS; other files and unreadable images are skipped, counted and named.

Grad-CAM (--explain, PyTorch checkpoint only): the final feature map of EfficientNet-B0 (after conv_head,
bn2 and its SiLU: 1280 channels at 1/32 of the input size) weighted by the gradient of the malignant
log-odds (malignant logit minus benign logit, which alone decides P(malignant)), summed over channels,
ReLU, upsampled to the centre crop the model sees and scaled to [0, 1]. So it shows what pushes towards
malignant, whatever the prediction; with --tta it is computed on the unflipped photo. The PNG goes next
to the photo, or into the current folder when the photo's folder is not writable.

A research tool, not a medical device: a doctor must examine any lesion that worries you.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np
from tqdm import tqdm

import model

# -----------------------------------------------------------------------------
MODEL = "skin_model.pth"  # checkpoint from AItraining.py, or a .onnx file from export_onnx.py (onnxruntime)
TTA = False  # average P(malignant) over the photo and its horizontal, vertical and double flip
EXPLAIN = False  # also save <photo>_gradcam.png, a Grad-CAM heat map (PyTorch checkpoint only)
CSV = None  # path: also write file, prediction, p_malignant, threshold for every photo; None = no file
THRESHOLD = None  # None = the threshold stored in the model; a number in [0, 1] overrides it
# -----------------------------------------------------------------------------


def find_images(paths):
    """(photos to classify, [(file, why skipped)]). Folders are searched recursively and sorted; a
    file named on the command line is tried whatever its extension. A path that does not exist: die."""
    images, skipped = [], []
    for path in paths:
        if os.path.isfile(path):
            images.append(path)
        elif os.path.isdir(path):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
            for file in found:
                if file.endswith("_gradcam.png"):  # what --explain wrote: not a photo
                    skipped.append((file, "a Grad-CAM picture written by predict.py --explain"))
                elif model.is_image_file(file):
                    images.append(file)
                else:
                    skipped.append((file, f"not an image file ({', '.join(model.IMAGE_EXTS)})"))
        else:
            model.die(f"{path} not found; pass an image file or a folder of images")
    if not images:
        model.die(f"no images in {', '.join(paths)} (looked for {', '.join(model.IMAGE_EXTS)} files"
                  + (f"; skipped {len(skipped)} other files)" if skipped else ")"))
    return images, skipped


def read_image(path):
    """(upright RGB Pillow image, None), or (None, why it could not be read)."""
    try:
        return model.load_image(path), None
    except Exception as e:  # OSError, DecompressionBombError, ...: not a readable image, whatever the cause
        return None, f"not a readable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def load_onnx(path):
    """(onnxruntime session, meta) for a file written by export_onnx.py; die on anything else."""
    try:
        import onnxruntime as ort
    except ImportError:
        model.die("onnxruntime is not installed; pip install onnxruntime, or pass --model skin_model.pth")
    try:
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        session = ort.InferenceSession(path, providers=providers)
    except Exception as e:
        model.die(f"{path} is not a readable ONNX model ({type(e).__name__}); export one with export_onnx.py")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    if len(inputs) != 1 or len(shape) != 4 or shape[1] != 3 or inputs[0].type != "tensor(float)":
        got = ", ".join(f"{i.name} {i.shape} {i.type}" for i in inputs)
        model.die(f"{path} takes {got}; predict.py needs one float32 input of shape [batch, 3, size, size] "
                  "(export the model with export_onnx.py)")
    props = session.get_modelmeta().custom_metadata_map
    keys = ("classes", "image_size", "mean", "std", "interpolation", "crop_pct", "threshold")
    missing = [key for key in keys if key not in props]
    if missing:
        model.die(f"{path} has no {', '.join(missing)} in its metadata; export the model with export_onnx.py")
    meta = {key: json.loads(props[key]) for key in keys}
    if list(meta["classes"]) != model.CLASSES:
        model.die(f"{path} is a model for classes {meta['classes']}; this project needs {model.CLASSES}")
    size = meta["image_size"]
    if shape[2:] != [size, size] or len(outputs) != 1 or outputs[0].shape[-1:] != [len(model.CLASSES)]:
        model.die(f"{path} takes {shape} and gives {outputs[0].shape}, its metadata says {size} px images and "
                  f"{len(model.CLASSES)} classes; export the model again with export_onnx.py")
    return session, meta


def onnx_probability(session, x, tta=False):
    """P(malignant) for one preprocessed image x (3, H, W) with onnxruntime; tta averages over the same
    four flips as model.malignant_probability (one view per run: works whatever the batch size)."""
    views = [x, x[:, :, ::-1], x[:, ::-1, :], x[:, ::-1, ::-1]] if tta else [x]
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: np.ascontiguousarray(v[None])})[0] for v in views])
    logits = logits.astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return float(p[:, model.CLASSES.index("malignant")].mean())


def torch_probability(net, x, tta=False):
    """P(malignant) for one image tensor x (3, H, W) from model.eval_transform."""
    import torch
    with torch.inference_mode():
        return float(model.malignant_probability(net, x[None], tta=tta)[0])


def gradcam(net, x):
    """Grad-CAM of the malignant log-odds on the final feature map of a timm model (EfficientNet-B0:
    conv_head -> bn2 -> SiLU) for one image x (1, 3, H, W). Returns an (H, W) float32 numpy map in [0, 1]
    (all zeros when nothing in the photo pushes towards malignant). Only the classifier head needs a
    gradient, so the backbone runs without one; works in eval mode and under torch.inference_mode."""
    import torch
    import torch.nn.functional as F
    with torch.inference_mode(False), torch.enable_grad():
        x = x.clone().contiguous(memory_format=torch.channels_last)  # a normal tensor even from inference mode
        with torch.no_grad():
            features = net.forward_features(x).float()  # (1, C, h, w)
        features = features.detach().requires_grad_()
        logits = net.forward_head(features)
        score = logits[0, model.CLASSES.index("malignant")] - logits[0, model.CLASSES.index("benign")]
        grads, = torch.autograd.grad(score, features)
        weights = grads.mean(dim=(2, 3), keepdim=True)  # one weight per channel: its average gradient
        cam = F.relu((weights * features).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].clamp(min=0)
    top = cam.max()
    return (cam / top if top > 0 else torch.zeros_like(cam)).cpu().numpy().astype(np.float32)


def shown_crop(x, cfg):
    """The photo as the model sees it (resized, centre-cropped) as an (H, W, 3) array in [0, 1]: the
    normalised tensor x (1, 3, H, W) mapped back."""
    x = x[0].detach().cpu().float().numpy().transpose(1, 2, 0)
    return (x * np.array(cfg["std"]) + np.array(cfg["mean"])).clip(0, 1)


def save_gradcam(crop, cam, path, title=""):
    """Save the crop and the Grad-CAM map over it (jet colormap) side by side as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    axes[0].imshow(crop)
    axes[0].set_title("photo (model's centre crop)")
    axes[1].imshow(crop)
    shown = axes[1].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[1].set_title("Grad-CAM: evidence for malignant")
    for ax in axes:
        ax.axis("off")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def gradcam_path(image_path):
    """<photo stem>_gradcam.png next to the photo, or in the current folder if that one is read-only."""
    folder, name = os.path.split(image_path)
    stem = os.path.splitext(name)[0] + "_gradcam.png"
    return os.path.join(folder, stem) if os.access(folder or ".", os.W_OK) else stem


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "prediction", "p_malignant", "threshold"])
        writer.writerows([file, label, f"{p:.6f}", f"{threshold:g}"] for file, label, p, threshold in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--model", default=MODEL, help="skin_model.pth, or a .onnx file from export_onnx.py")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=TTA, help="average over 4 flips")
    parser.add_argument("--explain", action=argparse.BooleanOptionalAction, default=EXPLAIN,
                        help="save <photo>_gradcam.png (PyTorch checkpoint only)")
    parser.add_argument("--csv", default=CSV, help="also write the predictions to this CSV file")
    parser.add_argument("--threshold", type=float, default=THRESHOLD, help="override the model's threshold")
    args = parser.parse_args()

    onnx = args.model.lower().endswith(".onnx")
    if not os.path.isfile(args.model):
        model.die(f"model file {args.model} not found; train one with 'python AItraining.py' "
                  "(or export one with export_onnx.py) or pass --model PATH")
    if args.explain and onnx:
        model.die("--explain needs gradients, which the ONNX model cannot give; pass --model skin_model.pth")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        model.die(f"--threshold {args.threshold} is not a probability; pass a number from 0 to 1")
    images, skipped = find_images(args.images)
    single = len(args.images) == 1 and os.path.isfile(args.images[0])
    if single:  # read it before loading the model: a bad file is reported at once
        first, why = read_image(images[0])
        if first is None:
            model.die(f"{images[0]} is {why}; pass a .jpg or .png photo")

    if onnx:
        session, meta = load_onnx(args.model)
    else:
        net, meta = model.load_checkpoint(args.model, model.pick_device())
        device = next(net.parameters()).device
        transform = model.eval_transform(model.meta_data_config(meta))
    cfg = model.meta_data_config(meta)
    threshold = float(meta["threshold"]) if args.threshold is None else args.threshold

    rows = []
    bar = tqdm(images, unit="image", disable=len(images) <= 20)  # a progress bar only for many photos
    for path in bar:
        img, why = (first, None) if single else read_image(path)
        if img is None:
            skipped.append((path, why))
            continue
        if onnx:
            p = onnx_probability(session, model.preprocess(img, cfg), args.tta)
        else:
            x = transform(img).to(device)
            p = torch_probability(net, x, args.tta)
        label = model.CLASSES[int(p >= threshold)]
        rows.append((path, label, p, threshold))
        if single:
            print(f"Prediction: {label}")
            print(f"P(malignant) = {p:.3f} (threshold {threshold:.3f}" + (", mean over 4 flips)" if args.tta else ")"))
        else:
            bar.write(f"{path}: Prediction: {label} (P(malignant) = {p:.3f})")
        if args.explain:
            cam = gradcam(net, x[None])
            out = gradcam_path(path)
            title = f"{os.path.basename(path)}: {label}, P(malignant) = {p:.3f}"
            save_gradcam(shown_crop(x[None], cfg), cam, out, title)
            bar.write(f"Grad-CAM saved to {out}")

    for path, why in skipped:
        model.warn(f"skipped {path}: {why}")
    if not rows:
        model.die(f"none of the {len(skipped)} files could be read as images; pass .jpg or .png photos")
    if not single:
        n = sum(label == "malignant" for _, label, _, _ in rows)
        print(f"{len(rows)} images: {n} malignant, {len(rows) - n} benign (threshold {threshold:.3f}"
              + (", mean over 4 flips)" if args.tta else ")")
              + (f"; {len(skipped)} skipped (listed on stderr)" if skipped else ""))
    if args.csv:
        try:
            write_csv(args.csv, rows)
        except OSError as e:
            model.die(f"could not write {args.csv} ({e.strerror}); pass a --csv path in a writable folder")
        print(f"predictions written to {args.csv}")
    print("note: a research tool, not a medical device; have a doctor examine any lesion that worries you",
          file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
