"""
Measure how well a model's familiarity measure (skinlesion/familiarity.py) tells photos like its training photos
from others: the share of each group it flags as unfamiliar. A measuring tool, not a part of the product; the
groups, --holdout and --ranks: docs/reference.md; results: docs/measurements.md.

    python tools/measure_familiarity.py --model skin_model.pth --own dataset/test --other ../shared/real_isic_sample
    python tools/measure_familiarity.py --model skin_model.pth --holdout --train dataset/train --val dataset/val
    python tools/measure_familiarity.py --model skin_model.pth --ranks 256 512 640 --train dataset/train
"""

import os
import sys

import numpy as np

import model
from skinlesion import familiarity, flags, interrupts, mahalanobis, messages, model_file, non_lesions, photos, quantise

# -----------------------------------------------------------------------------
MODEL = "skin_model.pth"  # checkpoint written by AItraining.py (with a familiarity measure)
OWN = "dataset/test"  # the model's own test photos (folder, searched recursively)
OTHER = None  # photos of another image type or source (folder), or None
OTHER_NAME = "other photos"  # what OTHER holds, for the report
N_OTHER = 400  # at most this many OTHER photos, >= 1
BATCH_SIZE = 32  # photos per forward pass, >= 1
SEED = 1  # seed of the drawn non-lesion images, 1 to 2**32 - 1 (0: those the model's head learned from)
N_NON_LESION = 40  # drawn non-lesion images of each kind, >= 1
HOLDOUT = False  # refit the measure so that nothing scored was seen by the fit (the two-way table)
RANKS = []  # covariance ranks to compare with the full matrix, each >= 1 (e.g. 256 512); []: none
TRAIN = "dataset/train"  # with HOLDOUT or RANKS: the photos (<class>/ sub-folders) the measure is refitted on
VAL = "dataset/val"  # with HOLDOUT or RANKS: the photos (<class>/ sub-folders) each refit's limit is chosen on
# -----------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {"own": ("<=", 0.05), "other": (">=", 0.90), "non-lesion": (">=", 0.95)}


def non_lesion_images(seed, n):
    """[(kind, PIL image)]: n images of each kind skinlesion/non_lesions.py draws, and the docs' pictures."""
    found = non_lesions.images(n, seed)
    docs = os.path.join(ROOT, "docs")
    for name in sorted(os.listdir(docs)):
        if name.endswith(".png"):
            found.append(("docs picture", photos.load_image(os.path.join(docs, name))))
    return found


def features_of(net, meta, images, batch_size):
    """The familiarity features (n, d), float64, of each PIL image, as predict.py computes them."""
    import torch

    cfg, found = model_file.meta_data_config(meta), []
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
    full = mahalanobis.fit(train, labels, n_classes, rank=d)
    full_distances = {name: mahalanobis.distances(f, *full) for name, f in {"val": val, **groups}.items()}
    full_limit = familiarity.choose_limit(full_distances["val"])
    lines = [f"{'rank':>5}{'MB':>7}{'error median':>14}{'max':>8}{'limit':>8}" + "".join(f"{g:>20}" for g in groups)]
    for rank in [*ranks, d]:
        arrays = mahalanobis.fit(train, labels, n_classes, rank=rank)
        found = {name: mahalanobis.distances(f, *arrays) for name, f in {"val": val, **groups}.items()}
        limit = familiarity.choose_limit(found["val"])
        error = np.concatenate([np.abs(found[g] - full_distances[g]) / full_distances[g] for g in ("val", "own")])
        flips, outside, cells = 0, 0, []
        for name in groups:
            to_unfamiliar, to_familiar, far = quantise.familiarity_flips(full_distances[name] / full_limit,
                                                                         found[name] / limit, 1.0)  # fmt: skip
            flips, outside = flips + to_unfamiliar + to_familiar, outside + far
            unfamiliar = (
                familiarity.is_unfamiliar(full_distances[name], full_limit),
                familiarity.is_unfamiliar(found[name], limit),
            )
            cells.append(f"{np.mean(unfamiliar[0]):.1%} / {np.mean(unfamiliar[1]):.1%}")
        mb = arrays[1].size * 4 / 1e6
        numbers = f"{rank:>5}{mb:>7.2f}{np.median(error):>14.2%}{error.max():>8.2%}{limit:>8.2f}"
        lines.append(numbers + "".join(f"{c:>20}" for c in cells) + f"   flips {flips} ({outside} outside the band)")
    return lines


KIND_FOLDS = [["flat_colour", "noise", "gradient"], ["stripes", "text", "chart"], ["texture", "scene", "docs picture"]]


def holdout_fits(fitted, groups, made, scored, scenario):
    """[(arrays, {group: features scored by them})]: the refits of one scenario (see holdout_rows), each scored on
    what it did not see. fitted: (train features, labels, n_classes); groups: test, other; made, scored: (features,
    kinds) of the drawn images the head learns from and of those scored."""
    other, fits = groups.get("other"), []
    if scenario == "distance":
        return [(familiarity.fit(*fitted), {"test": groups["test"], "other": other, "non-lesion": scored[0]})]
    halves = (0, 1) if scenario == "both" else (None,)
    for half in halves:
        chosen = None if half is None else np.arange(len(other)) % 2 == half
        for fold, held in enumerate(KIND_FOLDS):
            negatives = [made[0][~np.isin(made[1], held)]] + ([other[chosen]] if half is not None else [])
            found = {"non-lesion": scored[0][np.isin(scored[1], held)]}
            if fold == 0:  # the own photos and the other half once per half
                found.update(test=groups["test"], other=other if half is None else other[~chosen])
            fits.append((familiarity.fit(*fitted, np.concatenate(negatives)), found))
    return fits


def holdout_rows(fitted, val, groups, made, scored, quantile=familiarity.QUANTILE):
    """The two-way table's rows for one model: for the distance alone, the head with drawn images only, and with
    drawn images and the other photos (see the docstring), the share flagged of the own test photos, the other
    photos and the non-lesions, each refit's limit chosen on val at quantile."""
    lines = [f"{'measure':<10}{'own test':>20}{'other':>20}{'non-lesion':>20}   (flagged / scored)"]
    for scenario in ("distance", "drawn", "both") if groups.get("other") is not None else ("distance", "drawn"):
        counts = {name: [0, 0] for name in ("test", "other", "non-lesion")}
        for arrays, found in holdout_fits(fitted, groups, made, scored, scenario):
            limit = familiarity.choose_limit(familiarity.distances(val, arrays), quantile)
            for name, features in found.items():
                if features is not None:
                    far = familiarity.is_unfamiliar(familiarity.distances(features, arrays), limit)
                    counts[name] = [counts[name][0] + int(far.sum()), counts[name][1] + len(far)]
        cells = [f"{a / b:.1%} ({a}/{b})" if b else "-" for a, b in counts.values()]
        lines.append(f"{scenario:<10}" + "".join(f"{c:>20}" for c in cells))
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
    args = flags.parse_flags(globals(), argv, types={"OTHER": str, "RANKS": int})
    net, meta = model.load_checkpoint(args.model)
    if not meta.get("familiarity"):
        raise messages.UserError(
            f"{messages.printable(args.model)} has no familiarity measure; train it with this version of AItraining.py"
        )
    limit = meta["familiarity"]["limit"]
    print(
        f"{messages.printable(args.model)}: familiarity limit {limit:.3f} ({meta['familiarity']['image_types']}; "
        f"{meta['familiarity']['quantile']:.0%} of validation within)"
    )
    print(f"{'group':<34}{'images':>6}{'flagged':>9}{'share':>9}")
    groups = {"own": features_of(net, meta, photos_in(args.own), args.batch_size)}
    own = familiarity.distances_to(groups["own"], meta)
    print(row(f"own test photos ({args.own})", familiarity.is_unfamiliar(own, limit), "own"))
    if args.other:
        groups["other"] = features_of(net, meta, photos_in(args.other, args.n_other), args.batch_size)
        other = familiarity.distances_to(groups["other"], meta)
        print(row(args.other_name, familiarity.is_unfamiliar(other, limit), "other"))
    made = non_lesion_images(args.seed, args.n_non_lesion)
    groups["non-lesion"] = features_of(net, meta, [img for _, img in made], args.batch_size)
    far = familiarity.is_unfamiliar(familiarity.distances_to(groups["non-lesion"], meta), limit)
    print(row("non-lesion images (all)", far, "non-lesion"))
    kinds = [kind for kind, _ in made]
    for kind in dict.fromkeys(kinds):
        print(row(f"  {kind}", far[[k == kind for k in kinds]]))
    print(f"distances: own median {np.median(own):.2f}, max {own.max():.2f}; limit {limit:.2f}")
    if meta["familiarity"].get("exposed_to"):
        print("(the model's head learned from drawn images of these kinds too: --holdout refits without them)")
    if args.holdout or args.ranks:
        train, labels = labelled(net, meta, args.train, args.batch_size)
        val = labelled(net, meta, args.val, args.batch_size)[0]
    if args.holdout:
        drawn = non_lesions.images(familiarity.MADE_PER_KIND, 0)
        exposed = features_of(net, meta, [img for _, img in drawn], args.batch_size), [k for k, _ in drawn]
        fitted, scored = (train, labels, len(meta["classes"])), (groups["non-lesion"], np.array(kinds))
        print(f"refitted on {len(train)} photos of {args.train}, limits on {len(val)} of {args.val}")
        print("\n".join(holdout_rows(fitted, val, dict(groups, test=groups["own"]), exposed, scored)))
    if args.ranks:
        print(
            f"refitted on {len(train)} photos of {args.train}, limits on {len(val)} of {args.val}; flagged: full / rank"
        )
        print("\n".join(rank_rows(train, labels, val, groups, args.ranks, len(meta["classes"]))))


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main))
