"""Where the evidence lies: Grad-CAM of the malignant log-odds on EfficientNet-B0's final feature map, as a
signed map (> 0 where the evidence is for malignant, < 0 for benign), and its picture (predict.py --explain):
the crop, then the evidence for malignant and for benign over it, on the colour scale the web page uses
(inferno, more opaque where the evidence is stronger), with the model's cautions written on it."""

import os

import numpy as np

from skinlesion import plots
from skinlesion.photos import upsample_bilinear


def gradcam(net, x, mask):
    """Grad-CAM of log(P(malignant) / P(benign)) (P(malignant): the summed probability of the classes in mask;
    for two classes the logit difference, which alone decides P) on the final feature map of a timm model
    (EfficientNet-B0: conv_head -> bn2 -> SiLU) for one image x (1, 3, H, W): an (h, w) float32 map, > 0 where
    the evidence is for malignant. Only the head needs a gradient; works under torch.inference_mode."""
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        mask = torch.as_tensor(np.asarray(mask))  # made here: an inference-mode tensor cannot take part in autograd
        x = x.clone().contiguous(memory_format=torch.channels_last)  # a normal tensor even from inference mode
        with torch.no_grad():
            features = net.forward_features(x).float()  # (1, C, h, w)
        features = features.detach().requires_grad_()
        logits = net.forward_head(features)[0]
        score = torch.logsumexp(logits[mask], 0) - torch.logsumexp(logits[~mask], 0)
        (grads,) = torch.autograd.grad(score, features)
        cam = (grads.mean(dim=(2, 3), keepdim=True) * features).sum(1)[0]  # channels weighted by their mean gradient
    return cam.detach().cpu().numpy().astype(np.float32)


def evidence(cam, size):
    """The signed map enlarged (bilinear) to the size x size crop: (for malignant, for benign), both >= 0."""
    big = upsample_bilinear(cam, size)
    return np.maximum(big, 0), np.maximum(-big, 0)


def overlay(values):
    """RGBA (h, w, 4) of values in [0, 1]: inferno colours, alpha growing with the value squared (as the page
    draws it), so that little evidence leaves the photo visible and none leaves it clear."""
    from matplotlib import colormaps

    rgba = colormaps["inferno"](np.clip(values, 0, 1))
    rgba[..., 3] = np.clip(values, 0, 1) ** 2
    return rgba


def save_gradcam(crop, cam, path, title, cautions=()):
    """The crop, then the evidence for malignant and for benign over it, on one scale (1 = the strongest in
    either map), a colour bar, the cautions in a box below. A map that is zero everywhere says so. Returns the
    names of the classes with no evidence."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    plt = plots.pyplot()
    maps = evidence(cam, crop.size[0])
    top = max(m.max() for m in maps) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.8), layout="constrained")
    axes[0].imshow(crop)
    axes[0].set_title("the model's centre crop")
    blank = []
    for ax, m, name in zip(axes[1:], maps, ["malignant", "benign"]):
        ax.imshow(crop)
        ax.set_title(f"evidence for {name}")
        if m.max() > 0:
            ax.imshow(overlay(m / top))
        else:
            blank.append(name)
            ax.text(
                0.5,
                0.5,
                f"no region stands out as\nevidence for {name}\n(P is for the photo as a whole)",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=12,
                bbox=dict(facecolor="white", alpha=0.85),
            )
    for ax in axes:
        ax.axis("off")
    scale = ScalarMappable(Normalize(0, 1), "inferno")
    fig.colorbar(scale, ax=axes[1:], fraction=0.04, pad=0.02, label="evidence (1 = the strongest in either map)")
    fig.suptitle(f"{title}\nGrad-CAM on the final feature map: where the evidence for each class lies")
    if cautions:
        fig.text(
            0.5,
            -0.02,
            "\n".join(f"Caution: {c}" for c in cautions),
            ha="center",
            va="top",
            fontsize=10,
            wrap=True,
            bbox=dict(facecolor="#fff4ce", edgecolor="#1b1b1b"),
        )
    plots.save_figure(fig, path, dpi=100)
    return blank


def gradcam_names(images, folder):
    """{photo: folder/<name>_<ext>_gradcam.png}, one distinct name per photo (lesion.jpg and lesion.png, or
    two photo.jpg in different folders, get different names: a number is added)."""
    names, taken = {}, set()
    for image in images:
        stem, ext = os.path.splitext(os.path.basename(image))
        base = f"{stem}_{ext.lstrip('.').lower()}_gradcam" if ext else f"{stem}_gradcam"
        name, n = f"{base}.png", 1
        while name in taken:
            n += 1
            name = f"{base}-{n}.png"
        taken.add(name)
        names[image] = os.path.join(folder, name)
    return names
