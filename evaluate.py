"""
Score a trained checkpoint on a folder of held-out photos (by default the test split): every metric with a
95% bootstrap confidence interval, evaluation.json, confusion_matrix.png, roc_curve.png, and the most
confident mistakes as a list and as mistakes.png.

    python evaluate.py                                    # skin_model.pth on dataset/test
    python evaluate.py --tta                              # average over flips, and compare with plain
    python evaluate.py --model m.pth --data-dir dataset/val --output-dir results/

The decision threshold is the one stored in the checkpoint, chosen on the validation split by AItraining.py;
it is never tuned on the photos evaluated here. When the ROC-AUC's interval includes 0.5 the model cannot be
told from chance on these photos: the report says so (at_chance in evaluation.json).
"""

import json
import os

import numpy as np
from tqdm import tqdm

import model
from skinlesion import cli, dataset, files, metrics, photos

# -----------------------------------------------------------------------------
MODEL = "skin_model.pth"  # checkpoint written by AItraining.py
DATA_DIR = "dataset/test"  # any folder with benign/ and malignant/ sub-folders
BATCH_SIZE = 32  # photos per forward pass, >= 1
NUM_WORKERS = 2  # data-loading processes, >= 0 (0 loads in the main process)
TTA = False  # average P(malignant) over flips and compare with plain
N_BOOTSTRAP = 2000  # resamples for the 95% confidence intervals, >= 0 (0 = no intervals)
SEED = 0  # seed of the bootstrap resampling, >= 0
N_MISTAKES = 10  # how many of the most confident mistakes to list and show, >= 0
OUTPUT_DIR = "."  # folder for evaluation.json, confusion_matrix.png, roc_curve.png and mistakes.png
# -----------------------------------------------------------------------------
METRICS = [
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("precision", "precision"),
    ("sensitivity", "sensitivity (recall)"),
    ("specificity", "specificity"),
    ("f1", "F1"),
    ("roc_auc", "ROC-AUC"),
]


def parse_args(argv=None):
    """The flags, checked before any slow work (the output folder must take files)."""
    args = cli.parse_flags(globals(), argv)
    for flag, low in [("batch_size", 1), ("num_workers", 0), ("n_bootstrap", 0), ("seed", 0), ("n_mistakes", 0)]:
        cli.check(
            getattr(args, flag) >= low,
            "--" + flag.replace("_", "-"),
            getattr(args, flag),
            f"use a whole number >= {low}",
        )
    cli.check_writable(args.output_dir, "--output-dir", folder=True)
    return args


def score(net, paths, meta, args, device):
    """P(malignant) per photo in order (plain, and flip-averaged with --tta), NaN where it could not be read."""
    import torch

    cfg = model.meta_data_config(meta)
    crops = photos.Photos(paths, cfg["input_size"][-1], cfg["crop_pct"], cfg["interpolation"])
    plain, flipped = np.full(len(paths), np.nan), np.full(len(paths), np.nan)
    batches = [list(range(i, min(i + args.batch_size, len(paths)))) for i in range(0, len(paths), args.batch_size)]
    loader = photos.photo_loader(crops, batches, args.num_workers, device)
    with torch.inference_mode():
        for n, (x, whys) in enumerate(tqdm(loader, desc="scoring", unit="batch", disable=None)):
            at = np.arange(n * args.batch_size, n * args.batch_size + len(whys))[[not why for why in whys]]
            x = photos.normalise_batch(x[[not why for why in whys]].to(device), cfg)
            if len(at):
                plain[at] = model.malignant_probability(net, x).cpu().double().numpy()
                flipped[at] = (
                    model.malignant_probability(net, x, tta=True).cpu().double().numpy() if args.tta else np.nan
                )
    return plain, flipped


def most_confident_mistakes(paths, y, p, k, threshold=0.5):
    """The k wrong predictions at threshold, most wrong first: benign photos with the highest P(malignant),
    malignant ones with the lowest."""
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    wrong = np.flatnonzero((p >= threshold) != (y == 1))
    return [
        dict(path=str(paths[i]), true=model.CLASSES[y[i]], p_malignant=float(p[i]))
        for i in wrong[np.argsort(-np.abs(y[wrong] - p[wrong]), kind="stable")][:k]
    ]


def save_figure(fig, path):
    import matplotlib.pyplot as plt

    files.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)


def plot_confusion(metrics, title, path):
    """Counts and row rates (sensitivity and specificity are the diagonal rates)."""
    import matplotlib.pyplot as plt

    cm = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    rates = cm / cm.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n({rates[i, j]:.0%} of true {model.CLASSES[i]})",
                ha="center",
                va="center",
                color="white" if rates[i, j] > 0.6 else "black",
            )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=model.CLASSES,
        yticklabels=model.CLASSES,
        xlabel="predicted",
        ylabel="true",
        title=f"{title}\nthreshold {metrics['threshold']:.3f} (chosen on validation)",
    )
    save_figure(fig, path)


def plot_roc(y, p, metrics, auc_ci, path):
    """ROC curve, AUC with its 95% CI in the legend, the operating point at the stored threshold."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(fpr, tpr, lw=2, label=f"ROC-AUC {metrics['roc_auc']:.3f} (95% CI {auc_ci[0]:.3f}-{auc_ci[1]:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="chance")
    x, s = 1 - metrics["specificity"], metrics["sensitivity"]
    ax.plot(
        x,
        s,
        "o",
        color="C3",
        ms=8,
        label=f"threshold {metrics['threshold']:.3f}: sensitivity {s:.2f}, specificity {1 - x:.2f}",
    )
    ax.set(
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        title="ROC curve, malignant = positive",
    )
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def plot_mistakes(mistakes, cfg, path):
    """The most confident mistakes as the model saw them (its centre crop), with true label and P(malignant)."""
    import matplotlib.pyplot as plt

    cols = min(5, len(mistakes))
    rows = -(-len(mistakes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, mistakes):
        ax.imshow(photos.eval_crop(photos.load_image(m["path"]), cfg))
        ax.set_title(
            f"true {m['true']}\nP(malignant) {m['p_malignant']:.3f}\n{os.path.basename(m['path'])[:24]}", fontsize=8
        )
    fig.suptitle("Most confident mistakes (most wrong first)")
    save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    class_files, others = dataset.class_folders(args.data_dir)  # one line on a wrong layout, before the model loads
    if others:
        cli.warn(
            f"ignored {len(others)} file(s) in {args.data_dir} that are not images: "
            + cli.first_few([cli.printable(f) for f, _ in others], 5)
        )

    # model and scores
    device = model.pick_device()
    net, meta = model.load_checkpoint(args.model, device)
    threshold, cfg = float(meta["threshold"]), model.meta_data_config(meta)
    paths = np.array([f for c in model.CLASSES for f in class_files[c]])
    y = np.repeat(np.arange(len(model.CLASSES)), [len(class_files[c]) for c in model.CLASSES])
    plain, flipped = score(net, paths, meta, args, device)
    unreadable = [cli.printable(f) for f in paths[np.isnan(plain)]]
    if unreadable:
        cli.warn(f"skipped {len(unreadable)} unreadable image(s), not in the metrics: " + cli.first_few(unreadable, 5))
    keep = ~np.isnan(plain)
    paths, y, plain, flipped = paths[keep], y[keep], plain[keep], flipped[keep]
    if not (model.is_probability(plain).all() and (not args.tta or model.is_probability(flipped).all())):
        cli.die(f"{args.model} gives probabilities that are not numbers in [0, 1]; the model is broken, retrain it")
    p = flipped if args.tta else plain
    counts = {c: int((y == i).sum()) for i, c in enumerate(model.CLASSES)}
    if min(counts.values()) == 0:
        cli.die(f"no readable {min(counts, key=counts.get)} images in {args.data_dir}; both classes are needed")

    # metrics with intervals
    scores = metrics.binary_metrics(y, p, threshold)
    ci = (
        metrics.bootstrap_ci(y, p, args.n_bootstrap, args.seed, threshold=threshold)
        if args.n_bootstrap
        else {key: (float("nan"),) * 2 for key, _ in METRICS}
    )
    at_chance = metrics.at_chance(ci["roc_auc"]) if args.n_bootstrap else None  # no interval: unknown
    mistakes = most_confident_mistakes(paths, y, p, args.n_mistakes, threshold)
    print(
        f"\n{args.model} on {args.data_dir}: {counts['benign']} benign, {counts['malignant']} malignant images"
        + (", P(malignant) averaged over flips (TTA)" if args.tta else "")
    )
    print(f"threshold {threshold:.4f} (stored in the checkpoint, chosen on the validation split; not tuned here)\n")
    print(f"{'metric':<22}{'value':>7}   95% CI ({args.n_bootstrap} bootstrap resamples)")
    for key, name in METRICS:
        print(f"{name:<22}{scores[key]:>7.3f}   [{ci[key][0]:.3f}, {ci[key][1]:.3f}]")
    print(f"\nconfusion matrix (rows true, columns predicted)\n{'':<12}{'benign':>11}{'malignant':>11}")
    print(f"{'benign':<12}{scores['tn']:>11}{scores['fp']:>11}\n{'malignant':<12}{scores['fn']:>11}{scores['tp']:>11}")
    if mistakes:
        print(f"\n{len(mistakes)} most confident mistakes\n{'P(malignant)':>12}  {'true':<10}file")
        for m in mistakes:
            print(f"{m['p_malignant']:>12.3f}  {m['true']:<10}{cli.printable(m['path'])}")
    result = dict(
        model=args.model,
        data_dir=args.data_dir,
        tta=args.tta,
        threshold=threshold,
        threshold_source="validation split (stored in the checkpoint)",
        n_images=counts,
        n_unreadable=len(unreadable),
        unreadable=unreadable,
        n_non_image_files=len(others),
        metrics=scores,
        ci95={k: list(v) for k, v in ci.items()},
        at_chance=at_chance,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        val_metrics=meta.get("val_metrics", {}),
        mistakes=mistakes,
    )
    if args.tta:
        result["tta_comparison"] = compare_tta(y, plain, flipped, threshold, args.n_bootstrap, args.seed)

    # outputs
    outputs = [os.path.join(args.output_dir, f) for f in ("evaluation.json", "confusion_matrix.png", "roc_curve.png")]
    text = json.dumps(json.loads(json.dumps(result), parse_constant=lambda nan: None), indent=2)  # JSON has no NaN
    files.write_text(outputs[0], text)
    plot_confusion(scores, f"{os.path.basename(args.model)} on {args.data_dir}", outputs[1])
    plot_roc(y, p, scores, ci["roc_auc"], outputs[2])
    if mistakes:
        outputs.append(os.path.join(args.output_dir, "mistakes.png"))
        plot_mistakes(mistakes, cfg, outputs[-1])
    print(f"\nwrote {', '.join(outputs)}")
    if at_chance:
        cli.warn(
            f"on these photos the model cannot be told from chance: the 95% interval of its ROC-AUC "
            f"({ci['roc_auc'][0]:.3f}-{ci['roc_auc'][1]:.3f}) includes 0.5"
        )


def compare_tta(y, plain, flipped, threshold, n, seed):
    """Plain vs flip-averaged predictions on the same photos, with a paired bootstrap CI of the AUC gain."""
    result = {
        name: {
            k: metrics.binary_metrics(y, p, threshold)[k] for k in ("roc_auc", "accuracy", "sensitivity", "specificity")
        }
        for name, p in (("plain", plain), ("tta", flipped))
    }

    def gain(y, p):
        return metrics.roc_auc(y, p[..., 1]) - metrics.roc_auc(y, p[..., 0])

    low, high = metrics.bootstrap_ci(y, np.stack([plain, flipped], 1), n, seed, metric_fn=gain)["value"]
    verdict = "helps" if low > 0 else "hurts" if high < 0 else "makes no clear difference"
    result = dict(
        result,
        roc_auc_gain=result["tta"]["roc_auc"] - result["plain"]["roc_auc"],
        roc_auc_gain_ci95=[low, high],
        verdict=f"TTA {verdict} on this split",
    )
    print(f"\nTTA vs plain on the same images (threshold {threshold:.4f})\n{'':<14}{'plain':>8}{'TTA':>8}")
    for key in ("roc_auc", "accuracy", "sensitivity", "specificity"):
        print(f"{key.replace('roc_auc', 'ROC-AUC'):<14}{result['plain'][key]:>8.3f}{result['tta'][key]:>8.3f}")
    print(f"{result['verdict']}: ROC-AUC change {result['roc_auc_gain']:+.3f} (95% CI {low:+.3f} to {high:+.3f})")
    return result


if __name__ == "__main__":
    cli.run_script(main)
