"""
Classify skin-lesion photos as benign or malignant with the model AItraining.py trained.

    python predict.py photo.jpg                          # first line: "Prediction: benign" or "Prediction: malignant"
    python predict.py photos/ --csv predictions.csv      # every image under a folder, one line each, and a CSV
    python predict.py a.jpg b.png --tta                  # average P(malignant) over 4 flips of each photo
    python predict.py photo.jpg --explain                # also save photo_gradcam.png: where the evidence lies
    python predict.py photo.jpg --model skin_model.onnx  # onnxruntime (export_onnx.py): no torch needed

A photo is called malignant when P(malignant) >= the threshold AItraining.py chose on the validation set
(stored in the model file; --threshold overrides it). P is printed with enough digits to see which side of
the threshold it lies on, and a photo within model.BORDERLINE (0.02) of it is called borderline. A model
file that is broken (non-finite weights, a threshold outside [0, 1], ...) is refused, and a photo for which
the model gives no valid probability is an error, never a label. Folders are searched recursively for
files ending in photos.IMAGE_EXTS; other files (and named pipes) and unreadable images are skipped,
counted and named on stderr.

The model sees a centre crop of the photo (the shorter side resized, the rest cut off): keep the lesion in
the middle. --explain saves <photo>_gradcam.png beside the photo (or in the current folder if that one is
not writable): the crop, where the evidence for malignant lies and where the evidence for benign lies, on
one scale. The map is Grad-CAM on EfficientNet-B0's final feature map (1/32 of the input size) for the
malignant log-odds, split by sign; with the ONNX model it is the same map from the file's 'cam' output.

A research tool, not a medical device: a doctor must examine any lesion that worries you.
"""

import csv
import io
import os
import sys
import zipfile

import numpy as np
from tqdm import tqdm

import model
from skinlesion import cli, files, photos

# -----------------------------------------------------------------------------
MODEL = "skin_model.pth"  # checkpoint from AItraining.py, or a .onnx file from export_onnx.py (onnxruntime)
TTA = False  # average P(malignant) over the photo and its horizontal, vertical and double flip
EXPLAIN = False  # also save <photo>_gradcam.png, the evidence for malignant and for benign over the photo
CSV = None  # path: also write file, prediction, p_malignant, threshold, borderline per photo; None = no file
THRESHOLD = None  # None = the threshold stored in the model; a number from 0 to 1 overrides it
# -----------------------------------------------------------------------------


def parse_args(argv=None):
    """The flags, checked before anything slow (the model, the photos)."""
    args = cli.parse_flags(
        globals(), argv, ("images", "image files and/or folders (searched recursively)"), types={"THRESHOLD": float}
    )
    cli.check(
        args.threshold is None or cli.in_range(args.threshold, 0, 1),
        "--threshold",
        args.threshold,
        "use a probability from 0 to 1",
    )
    if args.csv:
        cli.check_writable(args.csv, "--csv")
    return args


def is_onnx(path):
    """By name or by content (a PyTorch checkpoint is a zip file; an ONNX file renamed .pth is not)."""
    return path.lower().endswith(".onnx") or (
        os.path.isfile(path) and not zipfile.is_zipfile(path) and model.is_onnx_file(path)
    )


def onnx_scores(session, x, tta=False, cam=False):
    """(P(malignant), signed evidence map or None) for one preprocessed photo x (3, H, W) with onnxruntime;
    tta averages over model.TTA_FLIPS (one view per run: works whatever batch size the file takes)."""
    outputs = ["logits", "cam"] if cam else ["logits"]
    runs = [
        session.run(
            outputs, {session.get_inputs()[0].name: np.ascontiguousarray(np.flip(x, dims) if dims else x)[None]}
        )
        for dims in (model.TTA_FLIPS if tta else [()])
    ]
    return float(model.softmax_malignant(np.concatenate([r[0] for r in runs])).mean()), (runs[0][1][0] if cam else None)


def gradcam(net, x):
    """Grad-CAM of the malignant log-odds (malignant logit minus benign logit, which alone decides P) on the
    final feature map of a timm model (EfficientNet-B0: conv_head -> bn2 -> SiLU) for one image x (1, 3, H, W):
    an (h, w) float32 map, > 0 where the evidence is for malignant, < 0 where it is for benign. Only the
    classifier head needs a gradient; works in eval mode and under torch.inference_mode."""
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        x = x.clone().contiguous(memory_format=torch.channels_last)  # a normal tensor even from inference mode
        with torch.no_grad():
            features = net.forward_features(x).float()  # (1, C, h, w)
        features = features.detach().requires_grad_()
        logits = net.forward_head(features)
        score = logits[0, model.CLASSES.index("malignant")] - logits[0, model.CLASSES.index("benign")]
        (grads,) = torch.autograd.grad(score, features)
        cam = (grads.mean(dim=(2, 3), keepdim=True) * features).sum(1)[0]  # channels weighted by their mean gradient
    return cam.detach().cpu().numpy().astype(np.float32)


def evidence(cam, size):
    """The signed map enlarged (bilinear) to the size x size crop: (for malignant, for benign), both >= 0."""
    from PIL import Image

    big = np.asarray(Image.fromarray(np.asarray(cam, np.float32), "F").resize((size, size), Image.BILINEAR))
    return np.maximum(big, 0), np.maximum(-big, 0)


def save_gradcam(crop, cam, path, title):
    """The crop, then the evidence for malignant and for benign over it, on one colour scale; a map that is
    zero everywhere says so. Returns the names of the classes with no evidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = evidence(cam, crop.size[0])
    top = max(m.max() for m in maps) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), layout="constrained")
    axes[0].imshow(crop)
    axes[0].set_title("the model's centre crop")
    blank = []
    for ax, m, name in zip(axes[1:], maps, ["malignant", "benign"]):
        ax.imshow(crop)
        shown = ax.imshow(m / top, cmap="jet", alpha=0.45 if m.max() > 0 else 0, vmin=0, vmax=1)
        ax.set_title(f"evidence for {name}")
        if m.max() == 0:
            blank.append(name)
            ax.text(
                0.5,
                0.5,
                f"no evidence for {name}\nin this photo",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=12,
                bbox=dict(facecolor="white", alpha=0.85),
            )
    for ax in axes:
        ax.axis("off")
    fig.colorbar(shown, ax=axes[1:], fraction=0.03, pad=0.02, label="evidence (1 = the strongest in either map)")
    fig.suptitle(f"{title}\nGrad-CAM on the final feature map: where the evidence for each class lies")
    files.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png"))
    plt.close(fig)
    return blank


def gradcam_path(image_path):
    """<photo stem>_gradcam.png next to the photo, or in the current folder if that one is read-only."""
    folder, name = os.path.split(image_path)
    stem = os.path.splitext(name)[0] + "_gradcam.png"
    return os.path.join(folder, stem) if os.access(folder or ".", os.W_OK) else stem


def decision_texts(p, threshold):
    """P and the threshold with enough digits (3 to 6) to see which side P lies on, and 'borderline' or ''."""
    digits = next((d for d in range(3, 7) if f"{p:.{d}f}" != f"{threshold:.{d}f}"), 6)
    return f"{p:.{digits}f}", f"{threshold:.{digits}f}", "borderline" if abs(p - threshold) < model.BORDERLINE else ""


def main(argv=None):
    args = parse_args(argv)
    onnx = is_onnx(args.model)
    model.check_model_file(args.model, "train one with 'python AItraining.py' (or export one with export_onnx.py)")
    images, skipped = photos.find_images(args.images)
    if not images:
        cli.die(
            f"no images in {', '.join(args.images)} (looked for {', '.join(photos.IMAGE_EXTS)} files"
            + (f"; skipped {len(skipped)} other files)" if skipped else ")")
        )
    single = len(args.images) == 1 and len(images) == 1 and not os.path.isdir(args.images[0])
    if single:  # read it before loading the model: a bad file is reported at once
        first, why = photos.try_load_image(images[0])
        if first is None:
            cli.die(f"{cli.printable(images[0])} is {why}; pass a .jpg or .png photo")

    # model (checked when loaded: a broken one is refused here)
    if onnx:
        session, meta = model.load_onnx(args.model)
        if args.explain and "cam" not in [o.name for o in session.get_outputs()]:
            cli.die(f"--explain needs the 'cam' output, which {args.model} lacks; export it again with export_onnx.py")
    else:
        import torch

        net, meta = model.load_checkpoint(args.model, model.pick_device())
        device = next(net.parameters()).device
    cfg = model.meta_data_config(meta)
    threshold = float(meta["threshold"]) if args.threshold is None else args.threshold
    if meta.get("at_chance"):
        ci = meta.get("val_auc_ci95")
        print(
            "caution: this model cannot be told from chance"
            + (f" (its validation ROC-AUC 95% interval {ci[0]:.3f}-{ci[1]:.3f} includes 0.5)" if ci else "")
            + "; do not rely on its predictions",
            file=sys.stderr,
        )

    # predictions
    rows, borderline = [], 0
    bar = tqdm(images, unit="image", disable=len(images) <= 20 or None)  # a progress bar only for many photos
    for path in bar:
        img, why = (first, None) if single else photos.try_load_image(path)
        if img is None:
            skipped.append((path, why))
            continue
        if onnx:
            p, cam = onnx_scores(session, photos.preprocess(img, cfg), args.tta, args.explain)
        else:
            x = torch.from_numpy(photos.preprocess(img, cfg)).to(device)[None]
            with torch.inference_mode():
                p = float(model.malignant_probability(net, x, tta=args.tta)[0])
            cam = gradcam(net, x) if args.explain else None
        if not model.is_probability(p):
            if single:
                cli.die(
                    f"the model gave no valid probability for {cli.printable(path)} (P = {p}); the model file is "
                    "broken: retrain or re-export it"
                )
            skipped.append((path, f"the model gave no valid probability (P = {p})"))
            continue
        label = model.CLASSES[int(p >= threshold)]
        p_text, t_text, near = decision_texts(p, threshold)
        borderline += bool(near)
        rows.append((cli.printable(path), label, p, threshold, bool(near)))
        if single:
            print(f"Prediction: {label}")
            print(
                f"P(malignant) = {p_text} (threshold {t_text}"
                + (", mean over 4 flips" if args.tta else "")
                + ")"
                + (f": borderline, within {model.BORDERLINE} of the threshold" if near else "")
            )
        else:
            bar.write(
                f"{cli.printable(path)}: Prediction: {label} (P(malignant) = {p_text}"
                + (", borderline)" if near else ")")
            )
        if args.explain:
            out = gradcam_path(path)
            blank = save_gradcam(
                photos.eval_crop(img, cfg),
                cam,
                out,
                f"{cli.printable(os.path.basename(path))}: {label}, P(malignant) = {p_text}",
            )
            bar.write(
                f"Grad-CAM saved to {cli.printable(out)}"
                + "".join(f"; it finds no evidence for {b} in this photo" for b in blank)
            )

    for path, why in skipped:
        cli.warn(f"skipped {cli.printable(path)}: {why}")
    if not rows:
        cli.die(f"none of the {len(skipped)} files could be classified; pass .jpg or .png photos")
    if not single:
        n = sum(label == "malignant" for _, label, *_ in rows)
        print(
            f"{len(rows)} images: {n} malignant, {len(rows) - n} benign (threshold {threshold:.3f}"
            + (", mean over 4 flips)" if args.tta else ")")
            + (f"; {borderline} borderline" if borderline else "")
            + (f"; {len(skipped)} skipped (listed on stderr)" if skipped else "")
        )
    if args.csv:
        text = io.StringIO()
        csv.writer(text).writerows(
            [["file", "prediction", "p_malignant", "threshold", "borderline"]]
            + [[f, label, f"{p:.6f}", f"{t:g}", str(near).lower()] for f, label, p, t, near in rows]
        )
        files.write_text(args.csv, text.getvalue())
        print(f"predictions written to {args.csv}")
    print(
        "note: a research tool, not a medical device; have a doctor examine any lesion that worries you",
        file=sys.stderr,
    )


if __name__ == "__main__":
    cli.run_script(main)
