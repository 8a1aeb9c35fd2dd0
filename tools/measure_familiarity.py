"""
Measure how well a model's familiarity measure (skinlesion/familiarity.py) tells photos like its training photos
from others, without real non-lesion photos: what share of each group of images it flags as unfamiliar (beyond
the limit AItraining.py chose on the validation photos). A measuring tool, not a part of the product.

    python tools/measure_familiarity.py --model skin_model.pth --own dataset/test \\
        --other ../shared/real_isic_sample --other-name "real dermoscopic photos"

Groups: OWN, the model's own test photos (target: at most 5% flagged); OTHER, photos of another image type or
source (target: at least 90%), at most N_OTHER of them, spread over the sorted list; and images made here that are
plainly not lesions (target: at least 95%): flat colours, noise, gradients, stripes and checkerboards, rendered
text, charts (matplotlib), and the project's own docs/*.png. Prints one row per group, and per kind of non-lesion.

    python tools/measure_familiarity.py --model skin_model.pth --ranks 256 512 640 --train dataset/train \
        --val dataset/val

With RANKS, it also refits the measure on TRAIN's photos at each rank (familiarity.RANK: the covariance's largest
eigenpairs kept, one floor for the rest) and at full rank, each limit chosen on VAL's photos as AItraining.py
does, and prints a row per rank: the distances' relative difference from the full matrix's on VAL and OWN
(median, max), the limit, each group's flagged share (full / rank) and the photos whose decision flips (in
brackets: those further than quantise.FAMILIARITY_BAND of the full limit from it).
"""

import io
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import model  # noqa: E402
from skinlesion import cli, familiarity, photos, quantise  # noqa: E402

# -----------------------------------------------------------------------------
MODEL = "skin_model.pth"  # checkpoint written by AItraining.py (with a familiarity measure)
OWN = "dataset/test"  # the model's own test photos (folder, searched recursively)
OTHER = None  # photos of another image type or source (folder), or None
OTHER_NAME = "other photos"  # what OTHER holds, for the report
N_OTHER = 400  # at most this many OTHER photos, >= 1
BATCH_SIZE = 32  # photos per forward pass, >= 1
SEED = 0  # seed of the noise images, 0 to 2**32 - 1
RANKS = []  # covariance ranks to compare with the full matrix, each >= 1 (e.g. 256 512); []: none
TRAIN = "dataset/train"  # with RANKS: the photos (<class>/ sub-folders) the measure is refitted on
VAL = "dataset/val"  # with RANKS: the photos (<class>/ sub-folders) each refit's limit is chosen on
# -----------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {"own": ("<=", 0.05), "other": (">=", 0.90), "non-lesion": (">=", 0.95)}


def non_lesions(seed):
    """[(kind, PIL image)]: images that are plainly not skin lesions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image, ImageDraw, ImageFont

    rng, found = np.random.default_rng(seed), []
    colours = [(128, 128, 128), (255, 255, 255), (0, 0, 0), (220, 30, 30), (30, 160, 40), (30, 60, 200),
               (240, 220, 40), (205, 160, 135), (120, 80, 50), (60, 200, 200)]  # fmt: skip
    found += [("flat colour", Image.new("RGB", (300, 240), c)) for c in colours]
    for _ in range(4):
        found.append(("noise", Image.fromarray(rng.integers(0, 256, (240, 300, 3), dtype=np.uint8))))
        grey = np.clip(rng.normal(128, 40, (240, 300, 1)), 0, 255).repeat(3, 2).astype(np.uint8)
        found.append(("noise", Image.fromarray(grey)))
    ramp = np.linspace(0, 255, 300)[None, :, None] * np.ones((240, 1, 3))
    for tint in ([1, 1, 1], [1, 0.4, 0.2], [0.2, 0.5, 1], [0.8, 0.8, 0.2]):
        found.append(("gradient", Image.fromarray((ramp * tint).astype(np.uint8))))
    yy, xx = np.mgrid[:240, :300]
    for period in (8, 20, 40):
        board = (((yy // period) + (xx // period)) % 2 * 255).astype(np.uint8)
        found.append(("stripes/checks", Image.fromarray(board).convert("RGB")))
        found.append(
            ("stripes/checks", Image.fromarray(((xx // period) % 2 * 200 + 30).astype(np.uint8)).convert("RGB"))
        )
    words = ["Invoice 2024-117", "The quick brown fox jumps over the lazy dog", "SALE 50% OFF", "Chapter 3",
             "def main():\n    return 0", "Lorem ipsum dolor sit amet,\nconsectetur adipiscing elit"]  # fmt: skip
    for i, text in enumerate(words):
        img = Image.new("RGB", (300, 240), [(255, 255, 255), (250, 245, 230), (20, 20, 20)][i % 3])
        ink = (240, 240, 240) if i % 3 == 2 else (10, 10, 10)
        ImageDraw.Draw(img).multiline_text((12, 60), text, fill=ink, font=ImageFont.load_default(size=22 + 4 * i))
        found.append(("text", img))
    for i in range(6):
        fig, ax = plt.subplots(figsize=(3, 2.4), dpi=100)
        x = np.arange(12)
        [ax.plot, ax.bar, ax.scatter, ax.step, ax.fill_between, ax.barh][i](x, rng.random(12).cumsum())
        ax.set_title(f"chart {i}")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        found.append(("chart", Image.open(buffer).convert("RGB")))
    docs = os.path.join(ROOT, "docs")
    for name in sorted(os.listdir(docs)):
        if name.endswith(".png"):
            found.append(("docs picture", photos.load_image(os.path.join(docs, name))))
    return found


def features_of(net, meta, images, batch_size):
    """The familiarity features (n, d), float64, of each PIL image, as predict.py computes them."""
    import torch

    cfg, found = model.meta_data_config(meta), []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack([photos.preprocess(img, cfg) for img in images[i : i + batch_size]]))
        with torch.inference_mode():
            found.append(familiarity.features(net, x)[0].double().numpy())
    return np.concatenate(found)


def labelled(net, meta, folder, batch_size):
    """(familiarity features, class indices) of the photos in folder/<class>/."""
    images, labels = [], []
    for index, name in enumerate(meta["classes"]):
        found = photos_in(os.path.join(folder, name))
        images, labels = images + found, labels + [index] * len(found)
    return features_of(net, meta, images, batch_size), np.array(labels)


def rank_rows(train, labels, val, groups, ranks, n_classes):
    """The comparison of each rank's refit with the full matrix's (see the docstring), as printed lines."""
    d = train.shape[1]
    full = familiarity.fit(train, labels, n_classes, rank=d)
    full_distances = {name: familiarity.distances(f, *full) for name, f in {"val": val, **groups}.items()}
    full_limit = familiarity.choose_limit(full_distances["val"])
    lines = [f"{'rank':>5}{'MB':>7}{'error median':>14}{'max':>8}{'limit':>8}" + "".join(f"{g:>20}" for g in groups)]
    for rank in [*ranks, d]:
        arrays = familiarity.fit(train, labels, n_classes, rank=rank)
        found = {name: familiarity.distances(f, *arrays) for name, f in {"val": val, **groups}.items()}
        limit = familiarity.choose_limit(found["val"])
        error = np.concatenate([np.abs(found[g] - full_distances[g]) / full_distances[g] for g in ("val", "own")])
        flips, outside, cells = 0, 0, []
        for name in groups:
            to_unfamiliar, to_familiar, far = quantise.familiarity_flips(full_distances[name] / full_limit,
                                                                         found[name] / limit, 1.0)  # fmt: skip
            flips, outside = flips + to_unfamiliar + to_familiar, outside + far
            cells.append(f"{np.mean(full_distances[name] > full_limit):.1%} / {np.mean(found[name] > limit):.1%}")
        mb = arrays[1].size * 4 / 1e6
        numbers = f"{rank:>5}{mb:>7.2f}{np.median(error):>14.2%}{error.max():>8.2%}{limit:>8.2f}"
        lines.append(numbers + "".join(f"{c:>20}" for c in cells) + f"   flips {flips} ({outside} outside the band)")
    return lines


def photos_in(folder, n=None):
    """Up to n readable photos under folder (spread over the sorted list), as PIL images."""
    paths = photos.find_images([folder])[0]
    if n is not None:
        paths = paths[:: max(1, len(paths) // n)][:n]
    return [img for img, _ in map(photos.try_load_image, paths) if img is not None]


def row(name, flagged, target=None):
    share = float(np.mean(flagged))
    verdict = ""
    if target:
        sign, bound = TARGETS[target]
        met = share <= bound if sign == "<=" else share >= bound
        verdict = f"  target {sign} {bound:.0%}: {'met' if met else 'MISSED'}"
    return f"{name:<34}{len(flagged):>6}{int(np.sum(flagged)):>9}{share:>9.1%}{verdict}"


def main(argv=None):
    args = cli.parse_flags(globals(), argv, types={"OTHER": str, "RANKS": int})
    net, meta = model.load_checkpoint(args.model)
    if not meta.get("familiarity"):
        cli.die(f"{cli.printable(args.model)} has no familiarity measure; train it with this version of AItraining.py")
    limit = meta["familiarity"]["limit"]
    print(
        f"{cli.printable(args.model)}: familiarity limit {limit:.3f} ({meta['familiarity']['image_types']}; 99% of "
        "validation within)"
    )
    print(f"{'group':<34}{'images':>6}{'flagged':>9}{'share':>9}")
    groups = {"own": features_of(net, meta, photos_in(args.own), args.batch_size)}
    own = familiarity.distances_to(groups["own"], meta)
    print(row(f"own test photos ({args.own})", own > limit, "own"))
    if args.other:
        groups["other"] = features_of(net, meta, photos_in(args.other, args.n_other), args.batch_size)
        print(row(args.other_name, familiarity.distances_to(groups["other"], meta) > limit, "other"))
    made = non_lesions(args.seed)
    groups["non-lesion"] = features_of(net, meta, [img for _, img in made], args.batch_size)
    far = familiarity.distances_to(groups["non-lesion"], meta) > limit
    print(row("non-lesion images (all)", far, "non-lesion"))
    kinds = [kind for kind, _ in made]
    for kind in dict.fromkeys(kinds):
        print(row(f"  {kind}", far[[k == kind for k in kinds]]))
    print(f"distances: own median {np.median(own):.2f}, max {own.max():.2f}; limit {limit:.2f}")
    if args.ranks:
        train, labels = labelled(net, meta, args.train, args.batch_size)
        val = labelled(net, meta, args.val, args.batch_size)[0]
        print(
            f"refitted on {len(train)} photos of {args.train}, limits on {len(val)} of {args.val}; flagged: full / rank"
        )
        print("\n".join(rank_rows(train, labels, val, groups, args.ranks, len(meta["classes"]))))


if __name__ == "__main__":
    main()
