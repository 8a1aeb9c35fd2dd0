"""The pictures of a run and of an evaluation: training curves, confusion matrices (benign/malignant and lesion
types), the ROC curve with the operating point, the reliability diagram before and after calibration, and the
most confident mistakes. Each is a PNG written atomically, recorded as ours (files.atomic_write). An evaluation's
pictures say which photos they show and how many (shown: 'test split (dataset/test), n = 61: 31 malignant'), in
their title and in the PNG's Title text."""

import os

import numpy as np

from skinlesion.files import TAG, atomic_write
from skinlesion.messages import printable
from skinlesion.metrics import interval_text, known_interval


def pyplot():
    """matplotlib's pyplot, drawing off screen, every text as it is: a name read from data (a folder, a photo, an
    export's name, a class) holding dollar signs is never parsed as mathtext ('$\\foo$' raised at savefig)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi=110, shown=None):
    """The figure as a PNG at path; shown: which photos it shows, also its PNG Title text."""
    metadata = {"Software": TAG, **({"Title": shown} if shown else {})}

    def write(tmp):
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png", metadata=metadata)

    atomic_write(path, write, "picture")
    pyplot().close(fig)


def training_curves(history, best_epoch, path):
    """Loss per epoch, and the validation numbers that need no threshold (ROC-AUC, log-loss of P(malignant),
    and the lesion types' balanced accuracy when there are types); the best epoch marked, chance dashed."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    ax1.plot(epochs, [h["train_loss"] for h in history], ".-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], ".-", label="validation")
    ax1.plot(epochs, [h["val_log_loss"] for h in history], ".--", label="validation log-loss of P(malignant)")
    ax1.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    ax2.plot(epochs, [h["roc_auc"] for h in history], ".-", lw=2, label="ROC-AUC, benign vs malignant")
    if "type_balanced_accuracy" in history[-1]:
        ax2.plot(epochs, [h["type_balanced_accuracy"] for h in history], ".-", label="balanced accuracy over types")
    ax2.axhline(0.5, color="grey", ls="--", lw=1, label="chance (ROC-AUC 0.5)")
    ax2.set(title="Validation (no threshold involved)", xlabel="epoch", ylim=(0, 1.02))
    for ax in (ax1, ax2):
        ax.axvline(best_epoch, color="C3", ls=":", lw=1, label=f"best epoch {best_epoch}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def confusion(counts, names, title, path, shown=None):
    """Counts [true, predicted] and row rates (for benign/malignant the diagonal rates are the specificity and
    the sensitivity); shown: which photos, under the title."""
    plt = pyplot()
    counts = np.asarray(counts)
    rates = counts / counts.sum(1, keepdims=True).clip(min=1)
    n = len(names)
    fig, ax = plt.subplots(figsize=(3 + 1.3 * n, 2.6 + 1.1 * n))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            colour = "white" if rates[i, j] > 0.6 else "black"
            ax.text(j, i, f"{counts[i, j]}\n({rates[i, j]:.0%})", ha="center", va="center", color=colour, fontsize=9)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=titled(title, shown))
    ax.set_xticklabels(names, rotation=30 if n > 2 else 0, ha="right" if n > 2 else "center")
    ax.set_yticklabels(names)
    save_figure(fig, path, shown=shown)


def titled(title, shown):
    """A picture's title with the photos it shows on a line of its own."""
    return f"{title}\n{shown}" if shown else title


def roc(y, p, scores, auc_ci, path, shown=None):
    """ROC curve, AUC with its 95% CI in the legend, the operating point at the stored threshold; shown: which
    photos, under the title."""
    from sklearn.metrics import roc_curve

    plt = pyplot()
    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    interval = f" (95% CI {interval_text(auc_ci)})" if known_interval(auc_ci) else ""  # none: --n-bootstrap 0
    ax.plot(fpr, tpr, lw=2, label=f"ROC-AUC {scores['roc_auc']:.3f}{interval}")
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="chance")
    sensitivity, specificity = scores["sensitivity"], scores["specificity"]
    label = f"threshold {scores['threshold']:.3f}: sensitivity {sensitivity:.2f}, specificity {specificity:.2f}"
    ax.plot(1 - specificity, sensitivity, "o", color="C3", ms=8, label=label)
    ax.set(
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        title=titled("ROC curve, malignant = positive", shown),
    )
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path, shown=shown)


def reliability(curves, path, shown=None):
    """The reliability diagram: per bin of P(malignant), the share of photos that are malignant, for each
    {name: (bins [(mean P, share, photos)], ECE)}; the diagonal is perfect calibration. Below: photos per bin.
    shown: which photos, under the title."""
    plt = pyplot()
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=[3, 1], sharex=True, layout="constrained")
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfectly calibrated")
    for k, (name, (bins, ece)) in enumerate(curves.items()):
        mean_p, share, photos = (np.array(v) for v in zip(*bins))
        ax.plot(mean_p, share, "o-", color=f"C{k}", label=f"{name} (ECE {ece:.3f})")
        counts.bar(mean_p, photos, width=0.03, alpha=0.6, color=f"C{k}")
    ax.set(
        ylabel="share of photos that are malignant",
        xlim=(0, 1),
        ylim=(0, 1),
        title=titled("Reliability: is P(malignant) a chance?", shown),
    )
    ax.legend(loc="upper left", fontsize=8)
    counts.set(xlabel="P(malignant) the model gave (bin mean)", ylabel="photos")
    save_figure(fig, path, shown=shown)


def mistakes(photos, crop, path, shown=None):
    """The most confident mistakes as the model saw them (crop(path) gives its centre crop), with the true
    label and P(malignant); the title (and shown: of which photos) above the tiles, never over their captions."""
    plt = pyplot()
    cols = min(5, len(photos))
    rows = -(-len(photos) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.0 * rows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, photos):
        ax.imshow(crop(m["path"]))
        name = printable(os.path.basename(m["path"]))[:24]  # a photo's name: data, on one line
        ax.set_title(f"true {m['true']}\nP(malignant) {m['p_malignant']:.3f}\n{name}", fontsize=8)
    fig.suptitle(titled("Most confident mistakes (most wrong first)", shown), fontsize=12)
    save_figure(fig, path, shown=shown)
