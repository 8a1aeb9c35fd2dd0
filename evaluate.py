"""
Score a trained checkpoint on a folder of held-out images (by default the test split): a metrics table
with 95% bootstrap confidence intervals, evaluation.json, confusion_matrix.png, roc_curve.png and the
most confident mistakes.

    python evaluate.py                                    # skin_model.pth on dataset/test
    python evaluate.py --tta                              # average over flips, and compare with plain
    python evaluate.py --model m.pth --data-dir dataset/val --output-dir results/

The decision threshold is the one stored in the checkpoint, chosen on the validation split by
AItraining.py; it is never tuned on the images evaluated here.
"""
import argparse
import functools
import json
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import ConfusionMatrixDisplay, roc_curve
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from tqdm import tqdm

import model

# -----------------------------------------------------------------------------
MODEL = "skin_model.pth"  # checkpoint written by AItraining.py
DATA_DIR = "dataset/test"  # any folder with benign/ and malignant/ sub-folders
BATCH_SIZE = 32  # images per forward pass (>= 1)
NUM_WORKERS = 2  # data-loading processes (>= 0; 0 loads in the main process)
TTA = False  # average P(malignant) over flips and compare with plain (--tta/--no-tta)
N_BOOTSTRAP = 2000  # resamples for the 95% confidence intervals (>= 0; 0 = no intervals)
SEED = 0  # seed of the bootstrap resampling
N_MISTAKES = 10  # how many of the most confident mistakes to list (>= 0)
OUTPUT_DIR = "."  # where evaluation.json, confusion_matrix.png and roc_curve.png go
# -----------------------------------------------------------------------------


def check_data_dir(data_dir):
    """Paths of the non-image files in the class folders; dies on a wrong layout or an empty class."""
    if not os.path.isdir(data_dir):
        model.die(f"data folder {data_dir} not found; make it with 'python prepare_dataset.py' or pass --data-dir DIR")
    found = sorted(e.name for e in os.scandir(data_dir) if e.is_dir())
    missing, extra = [c for c in model.CLASSES if c not in found], [c for c in found if c not in model.CLASSES]
    if missing or extra:
        what = f"has no {' or '.join(c + '/' for c in missing)} sub-folder" if missing else \
            f"has unexpected sub-folder(s) {', '.join(c + '/' for c in extra)} (move them elsewhere)"
        model.die(f"{data_dir} {what}; it must hold exactly one sub-folder per class, "
                  f"{' and '.join(c + '/' for c in model.CLASSES)}, as prepare_dataset.py writes")
    n_images, others = {}, []
    for c in model.CLASSES:
        files = sorted(os.path.join(root, f) for root, _, names in os.walk(os.path.join(data_dir, c), followlinks=True)
                       for f in names)
        n_images[c] = sum(model.is_image_file(f) for f in files)
        others += [f for f in files if not model.is_image_file(f)]
    empty = [os.path.join(data_dir, c) for c in model.CLASSES if n_images[c] == 0]
    if empty:
        model.die(f"no images in {' and '.join(empty)} (looked for {', '.join(model.IMAGE_EXTS)}); "
                  "both classes are needed to evaluate")
    return others


def read_image(path):
    """model.load_image, or None for a file that cannot be read (counted and reported, not fatal)."""
    try:
        return model.load_image(path)
    except Exception:  # truncated, not really an image, decompression bomb, ...
        return None


def transform_readable(transform, img):
    return None if img is None else transform(img)


def collate_readable(batch):
    """(the readable images of a batch stacked, or None; a bool mask of which were readable)."""
    xs = [x for x, _ in batch if x is not None]
    return (torch.stack(xs) if xs else None), torch.tensor([x is not None for x, _ in batch])


def make_loader(data_dir, meta, batch_size, num_workers, device):
    transform = functools.partial(transform_readable, model.eval_transform(model.meta_data_config(meta)))
    dataset = ImageFolder(data_dir, loader=read_image, transform=transform, is_valid_file=model.is_image_file)
    if dataset.classes != model.CLASSES:
        model.die(f"{data_dir} has class folders {dataset.classes}; it needs exactly {model.CLASSES}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_readable, pin_memory=device.type == "cuda")
    return dataset, loader


@torch.inference_mode()
def score(net, loader, device, tta=False):
    """P(malignant) per image in dataset order, NaN where unreadable: (plain, flip-averaged or None)."""
    plain, flipped = [], []
    for x, readable in tqdm(loader, desc="scoring", unit="batch"):
        p, q = torch.full((len(readable),), float("nan")), torch.full((len(readable),), float("nan"))
        if x is not None:
            x = x.to(device, non_blocking=True)
            p[readable] = model.malignant_probability(net, x).cpu()
            if tta:
                q[readable] = model.malignant_probability(net, x, tta=True).cpu()
        plain.append(p)
        flipped.append(q)
    return torch.cat(plain).double().numpy(), torch.cat(flipped).double().numpy() if tta else None


def roc_auc(y, p):
    """ROC-AUC of each row (Mann-Whitney U, tied scores share ranks): sklearn's roc_auc_score,
    vectorised over the last axis so 2000 bootstrap resamples take milliseconds, not seconds."""
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    pos = y == 1
    n1, n0 = pos.sum(-1), (~pos).sum(-1)
    return ((rankdata(p, axis=-1) * pos).sum(-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def sensitivity(y, p, threshold):  # row-wise, like roc_auc; y and p are numpy arrays
    return ((p >= threshold) & (y == 1)).sum(-1) / (y == 1).sum(-1)


def specificity(y, p, threshold):
    return ((p < threshold) & (y == 0)).sum(-1) / (y == 0).sum(-1)


def roc_auc_gain(y, p):
    """ROC-AUC of p[..., 1] minus that of p[..., 0] (TTA minus plain, on the same images)."""
    return roc_auc(y, p[..., 1]) - roc_auc(y, p[..., 0])


def bootstrap_ci(y, p, metric_fn, n=N_BOOTSTRAP, seed=SEED, level=0.95):
    """Percentile bootstrap over images: (low, high) of metric_fn over n resamples drawn with
    replacement, skipping resamples with one class only. metric_fn(y, p) works row-wise on
    (resamples, images) arrays. (nan, nan) when no resample is usable."""
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n, len(y)))
    idx = idx[y[idx].min(1) != y[idx].max(1)]
    if len(idx) == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(metric_fn(y[idx], p[idx]), [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def most_confident_mistakes(paths, y, p, k, threshold=0.5):
    """The k wrong predictions at threshold, most wrong first: benign images with the highest
    P(malignant), malignant ones with the lowest."""
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    wrong = np.flatnonzero((p >= threshold) != (y == 1))
    wrongness = np.abs(y[wrong] - p[wrong])
    return [dict(path=str(paths[i]), true=model.CLASSES[y[i]], p_malignant=float(p[i]))
            for i in wrong[np.argsort(-wrongness, kind="stable")][:k]]


def plot_confusion(metrics, path):
    cm = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    disp = ConfusionMatrixDisplay(cm, display_labels=model.CLASSES).plot(cmap="Blues", values_format="d", colorbar=False)
    disp.ax_.set_title(f"threshold {metrics['threshold']:.3f} (chosen on validation)")
    disp.figure_.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(disp.figure_)


def plot_roc(y, p, metrics, auc_ci, path):
    """ROC curve, AUC with its 95% CI in the legend, the operating point at the stored threshold."""
    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(fpr, tpr, lw=2, label=f"ROC-AUC {metrics['roc_auc']:.3f} (95% CI {auc_ci[0]:.3f}-{auc_ci[1]:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="chance")
    x, s = 1 - metrics["specificity"], metrics["sensitivity"]
    ax.plot(x, s, "o", color="C3", ms=8,
            label=f"threshold {metrics['threshold']:.3f}: sensitivity {s:.2f}, specificity {1 - x:.2f}")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="ROC curve, malignant = positive")
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)


def compare_tta(y, plain, flipped, threshold, n, seed):
    """Plain vs flip-averaged predictions on the same images, with a paired bootstrap CI of the AUC gain."""
    result = {}
    for name, p in (("plain", plain), ("tta", flipped)):
        m = model.binary_metrics(y, p, threshold)
        result[name] = {k: m[k] for k in ("roc_auc", "accuracy", "sensitivity", "specificity")}
    low, high = bootstrap_ci(y, np.stack([plain, flipped], 1), roc_auc_gain, n, seed)
    verdict = "helps" if low > 0 else "hurts" if high < 0 else "makes no clear difference"
    return dict(result, roc_auc_gain=result["tta"]["roc_auc"] - result["plain"]["roc_auc"],
                roc_auc_gain_ci95=[low, high], verdict=f"TTA {verdict} on this split")


def evaluate(args):
    others = check_data_dir(args.data_dir)
    if others:
        model.warn(f"ignored {len(others)} non-image file(s) in {args.data_dir} (not {', '.join(model.IMAGE_EXTS)}): "
                   + ", ".join(others[:5]) + (" ..." if len(others) > 5 else ""))
    device = model.pick_device()
    net, meta = model.load_checkpoint(args.model, device)
    threshold = float(meta["threshold"])
    dataset, loader = make_loader(args.data_dir, meta, args.batch_size, args.num_workers, device)
    plain, flipped = score(net, loader, device, args.tta)
    paths, y = np.array([s for s, _ in dataset.samples]), np.array(dataset.targets)
    readable = ~np.isnan(plain)
    unreadable = [str(s) for s in paths[~readable]]
    if unreadable:
        model.warn(f"skipped {len(unreadable)} unreadable image(s), not in the metrics: "
                   + ", ".join(unreadable[:5]) + (" ..." if len(unreadable) > 5 else ""))
    paths, y, plain = paths[readable], y[readable], plain[readable]
    p = flipped[readable] if args.tta else plain
    counts = {c: int((y == i).sum()) for i, c in enumerate(model.CLASSES)}
    if min(counts.values()) == 0:
        model.die(f"no readable {min(counts, key=counts.get)} images in {args.data_dir}; both classes are needed")

    metrics = model.binary_metrics(y, p, threshold)
    ci = {"roc_auc": bootstrap_ci(y, p, roc_auc, args.n_bootstrap, args.seed),
          "sensitivity": bootstrap_ci(y, p, functools.partial(sensitivity, threshold=threshold), args.n_bootstrap, args.seed),
          "specificity": bootstrap_ci(y, p, functools.partial(specificity, threshold=threshold), args.n_bootstrap, args.seed)}
    mistakes = most_confident_mistakes(paths, y, p, args.n_mistakes, threshold)

    print(f"\n{args.model} on {args.data_dir}: {counts['benign']} benign, {counts['malignant']} malignant images"
          + (", P(malignant) averaged over flips (TTA)" if args.tta else ""))
    print(f"threshold {threshold:.4f} (stored in the checkpoint, chosen on the validation split; not tuned here)\n")
    print(f"{'metric':<22}{'value':>7}   95% CI ({args.n_bootstrap} bootstrap resamples)")
    for key, name in [("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("precision", "precision"),
                      ("sensitivity", "sensitivity (recall)"), ("specificity", "specificity"), ("f1", "F1"),
                      ("roc_auc", "ROC-AUC")]:
        print(f"{name:<22}{metrics[key]:>7.3f}" + (f"   [{ci[key][0]:.3f}, {ci[key][1]:.3f}]" if key in ci else ""))
    print(f"\nconfusion matrix (rows true, columns predicted)\n{'':<12}{'benign':>11}{'malignant':>11}")
    print(f"{'benign':<12}{metrics['tn']:>11}{metrics['fp']:>11}\n{'malignant':<12}{metrics['fn']:>11}{metrics['tp']:>11}")
    if mistakes:
        print(f"\n{len(mistakes)} most confident mistakes\n{'P(malignant)':>12}  {'true':<10}file")
        for m in mistakes:
            print(f"{m['p_malignant']:>12.3f}  {m['true']:<10}{m['path']}")

    result = dict(model=args.model, data_dir=args.data_dir, tta=args.tta, threshold=threshold,
                  threshold_source="validation split (stored in the checkpoint)", n_images=counts,
                  n_unreadable=len(unreadable), unreadable=unreadable, n_non_image_files=len(others),
                  metrics=metrics, ci95={k: list(v) for k, v in ci.items()}, n_bootstrap=args.n_bootstrap,
                  seed=args.seed, val_metrics=meta.get("val_metrics", {}), mistakes=mistakes)
    if args.tta:
        cmp = result["tta_comparison"] = compare_tta(y, plain, p, threshold, args.n_bootstrap, args.seed)
        print(f"\nTTA vs plain on the same images (threshold {threshold:.4f})\n{'':<14}{'plain':>8}{'TTA':>8}")
        for key, name in [("roc_auc", "ROC-AUC"), ("accuracy", "accuracy"), ("sensitivity", "sensitivity"),
                          ("specificity", "specificity")]:
            print(f"{name:<14}{cmp['plain'][key]:>8.3f}{cmp['tta'][key]:>8.3f}")
        low, high = cmp["roc_auc_gain_ci95"]
        print(f"{cmp['verdict']}: ROC-AUC change {cmp['roc_auc_gain']:+.3f} (95% CI {low:+.3f} to {high:+.3f})")

    os.makedirs(args.output_dir, exist_ok=True)
    outputs = [os.path.join(args.output_dir, f) for f in ("evaluation.json", "confusion_matrix.png", "roc_curve.png")]
    with open(outputs[0], "w") as f:
        json.dump(json.loads(json.dumps(result), parse_constant=lambda nan: None), f, indent=2)  # JSON has no NaN: null
    plot_confusion(metrics, outputs[1])
    plot_roc(y, p, metrics, ci["roc_auc"], outputs[2])
    print(f"\nwrote {', '.join(outputs)}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL, help="checkpoint written by AItraining.py")
    ap.add_argument("--data-dir", default=DATA_DIR, help="folder with benign/ and malignant/ sub-folders")
    ap.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    ap.add_argument("--num-workers", type=int, default=NUM_WORKERS)
    ap.add_argument("--tta", action=argparse.BooleanOptionalAction, default=TTA, help="average over flips")
    ap.add_argument("--n-bootstrap", type=int, default=N_BOOTSTRAP)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--n-mistakes", type=int, default=N_MISTAKES)
    ap.add_argument("--output-dir", default=OUTPUT_DIR)
    args = ap.parse_args(argv)
    if args.batch_size < 1 or min(args.num_workers, args.n_bootstrap, args.n_mistakes) < 0:
        model.die("--batch-size must be >= 1 and --num-workers, --n-bootstrap, --n-mistakes >= 0")
    return args


def main():
    args = parse_args()
    try:
        evaluate(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
