"""
Score a trained model on held-out photos (by default the test split), each figure with its 95% interval, and add
the results to the model card; or validate it on another clinic's export. In full: docs/reference.md.

    python evaluate.py                                    # skin_model.pth on dataset/test
    python evaluate.py --tta                              # average over flips, and compare with plain
    python evaluate.py --model m.pth --data-dir dataset/val --output-dir results/
    python evaluate.py --external other_clinic/ --external-name "Clinic B 2025"   # an ISIC export as downloaded
"""

from skinlesion import interrupts

if __name__ == "__main__":  # first, before the libraries load: a Ctrl-C while they do is one line, not a traceback
    interrupts.one_line_while_loading()

import json
import os
import re
import sys
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

import model
from skinlesion import (
    card,
    dataset,
    devices,
    familiarity,
    files,
    flags,
    folders,
    isic,
    messages,
    metrics,
    model_file,
    photos,
    plots,
    remote,
    schema,
    splits,
)

# -----------------------------------------------------------------------------
MODEL = "skin_model.pth"  # checkpoint written by AItraining.py
DATA_DIR = "dataset/test"  # a split of a prepared dataset (dataset/shards/test: its shards), or a folder per class
NETWORK_TIMEOUT = 600  # seconds one read of a remote shard or index may take, 1 to 86400 (connecting: 30 at most)
BATCH_SIZE = 32  # photos per forward pass, 1 to 100000
NUM_WORKERS = 2  # data-loading processes, 0 to 256 (0 loads in the main process)
TTA = False  # average P(malignant) over flips and compare with plain
N_BOOTSTRAP = 2000  # resamples for the 95% confidence intervals, 0 to 100000 (0: no intervals)
SEED = 0  # seed of the bootstrap resampling, 0 to 2**32 - 1
N_MISTAKES = 10  # how many of the most confident mistakes to list and show, 0 to 1000
EXTERNAL = None  # path: an ISIC export folder (metadata.csv, photos): validate on all its photos instead of DATA_DIR
EXTERNAL_NAME = None  # the name its card section goes by ("External validation: NAME"); None = the folder's name
OUTPUT_DIR = "."  # folder for evaluation.json and the pictures (roc_curve...; external: evaluation_NAME.json...)
OVERWRITE = False  # replace output files that this project did not write (never done without it)
# -----------------------------------------------------------------------------
NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "precision": "precision",
    "sensitivity": "sensitivity (recall)",
    "specificity": "specificity",
    "f1": "F1",
    "roc_auc": "ROC-AUC",
}
N_LISTED = 30  # unfamiliar photos listed on the console at most (the evaluation's JSON file lists them all)
PICTURES = ["confusion_matrix.png", "roc_curve.png", "calibration.png", "mistakes.png", "types_confusion.png"]


def parse_args(argv=None):
    """The flags, checked before any slow work (the outputs must be writable, ours, and none of the inputs)."""
    args = flags.parse_flags(globals(), argv, types={"EXTERNAL": str, "EXTERNAL_NAME": str})
    if args.external is not None:
        wanted = "not a folder; pass the folder of an ISIC export as downloaded (its metadata.csv and photos)"
        flags.check(os.path.isdir(args.external), "--external", messages.printable(args.external), wanted)
    name = args.external_name
    flags.check(name is None or args.external is not None, "--external-name", name, "pass --external with it")
    wanted = f"use printable text of 1 to {schema.MAX_NAME} characters"
    flags.check(name is None or schema.is_text(name, schema.MAX_NAME), "--external-name", repr(name), wanted)
    args.photos = args.data_dir if args.external is None else args.external  # the photos scored
    flags.check_writable(args.output_dir, "--output-dir", folder=True)
    folders.check_outside(args.output_dir, "--output-dir", [args.photos])
    args.card = os.path.splitext(args.model)[0] + ".md"
    files.check_output(args.card, "--model (its card beside it)", "model card", [args.model], args.overwrite)
    remote.set_seconds(args.network_timeout)  # remote shards: every read has a deadline
    return args


def evaluation_name(args, meta):
    """None for the model's own test split, else the name the external validation goes by: --external-name, the
    export's folder, or DATA_DIR's (dataset.external_name)."""
    if args.external is not None:
        return args.external_name or os.path.basename(os.path.abspath(args.external))
    return dataset.external_name(args.data_dir, meta.get("manifest_sha256"))


def output_paths(args, name):
    """{evaluation.json or a picture's name: the path this run writes it to}, checked before the photos are scored
    (ours to replace, not the model): the test split's under their own names; an external validation's with its
    name in them (evaluation_<name>.json, roc_curve_<name>.png, ...), so that it never replaces the test run's,
    which export_onnx.py reads."""
    tag = None
    if name:  # a plain file-name part: letters, digits, '.', '_' and '-'
        tag = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:80] or "external"
    out = {}
    for file in ["evaluation.json", *PICTURES]:
        stem, ext = os.path.splitext(file)
        out[file] = os.path.join(args.output_dir, f"{stem}_{tag}{ext}" if tag else file)
        kind = "picture" if file in PICTURES else "evaluation"
        files.check_output(out[file], "--output-dir", kind, [args.model], args.overwrite)
    return out


def without_nan(result):
    """result as strict JSON values: null where a number is not known (NaN: --n-bootstrap 0 computes no interval),
    for evaluation.json and the card, which every reader parses (JSON has no NaN)."""
    return json.loads(json.dumps(result), parse_constant=lambda constant: None)


def score(net, paths, meta, args, device, blobs=None):
    """(The logits of each view of each photo (one array per view: the photo, and with --tta its flips), the
    photos' familiarity distances or None (a model without the measure)), NaN where a photo could not be read;
    blobs: the photos' bytes, read from shards."""
    cfg = model_file.meta_data_config(meta)
    crops = photos.Photos(paths, cfg["input_size"][-1], cfg["crop_pct"], cfg["interpolation"], blobs)
    views = [np.full((len(paths), len(meta["classes"])), np.nan) for _ in (model.TTA_FLIPS if args.tta else [()])]
    distances = np.full(len(paths), np.nan) if meta.get("familiarity") else None
    order = [list(range(i, min(i + args.batch_size, len(paths)))) for i in range(0, len(paths), args.batch_size)]
    loader = photos.photo_loader(crops, order, args.num_workers, device)
    for indices, (x, whys) in zip(order, tqdm(loader, desc="scoring", unit="batch", disable=None)):
        readable = [not why for why in whys]
        at = np.array(indices)[readable]
        if len(at):
            x = photos.normalise_batch(x[readable].to(device), cfg)
            for view, logits in zip(views, model.view_logits(net, x, args.tta)):
                view[at] = logits
            if distances is not None:
                distances[at] = familiarity.distances_of(net, x, meta)
    return views, distances


def most_confident_mistakes(paths, y, p, k, threshold=0.5):
    """The k wrong predictions at threshold, most wrong first: benign photos with the highest P(malignant),
    malignant ones with the lowest."""
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    wrong = np.flatnonzero((p >= threshold) != (y == 1))
    order = wrong[np.argsort(-np.abs(y[wrong] - p[wrong]), kind="stable")][:k]
    return [dict(path=str(paths[i]), true=model.CLASSES[y[i]], p_malignant=float(p[i])) for i in order]


def manifest_rows(data_dir, paths):
    """The manifest rows of the photos (in order), from the dataset the folder belongs to, or None."""
    root = os.path.dirname(os.path.abspath(data_dir))
    manifest = dataset.read_manifest(root)
    if manifest is None or "file" not in manifest:
        return None
    rows = manifest.set_index("file").reindex([os.path.relpath(os.path.abspath(p), root) for p in paths])
    return None if rows.isic_id.isna().any() else rows.fillna("").reset_index()


def types_report(labels, probabilities, classes, path, args, described):
    """The lesion types' balanced accuracy and each type's sensitivity with 95% intervals, one-vs-rest ROC-AUC
    per type, and the confusion picture (saying which photos it shows)."""
    counts = metrics.confusion(labels, probabilities)
    plots.confusion(counts, classes, "lesion types (most probable type)", path, described["shown"])
    aucs = metrics.one_vs_rest_auc(labels, probabilities)
    found = metrics.types_with_intervals(labels, probabilities, classes, args.n_bootstrap, args.seed)
    return dict(found, classes=classes, one_vs_rest_auc=dict(zip(classes, aucs)), confusion=counts.tolist())


def split_photos(args, meta):
    """DATA_DIR's photos: (paths, class index per photo, the classes, blobs from shards or None)."""
    classes = meta["classes"]
    class_files, others = splits.class_files(args.data_dir, classes)  # one line on a wrong layout
    if others:
        messages.warn(
            f"ignored {len(others)} file(s) in {messages.printable(args.data_dir)} that are not images: "
            + messages.first_few([messages.printable(f) for f, _ in others], 5)
        )
    paths = np.array([f for c in classes for f in class_files[c]])
    labels = np.repeat(np.arange(len(classes)), [len(class_files[c]) for c in classes])
    return paths, labels, classes, splits.split_blobs(args.data_dir), len(others)


def export_photos(args):
    """EXTERNAL's photos (an ISIC export as downloaded): (paths, side per photo (1: malignant), the sides, None,
    their metadata rows); the rows left out are counted and said."""
    rows, left_out = isic.labelled_photos(args.external)
    for why, n, examples in left_out:
        if n:
            messages.warn(f"left out {n} row(s) of {messages.printable(args.external)}: {why} ({examples})")
    if rows.empty:
        raise messages.UserError(
            f"no photo in {messages.printable(args.external)} has a definite benign/malignant side and an image file"
        )
    labels = (rows.side == "malignant").to_numpy().astype(int)
    return rows.path.to_numpy(), labels, model.CLASSES, None, rows


def photos_to_score(args, meta):
    """The photos to score: (paths, class index per photo, the classes, blobs from shards or None, an export's
    metadata rows or None (a split's come from its manifest), how many files in DATA_DIR are not images)."""
    if args.external is not None:
        paths, labels, classes, blobs, rows = export_photos(args)
        return paths, labels, classes, blobs, rows, 0
    paths, labels, classes, blobs, others = split_photos(args, meta)
    return paths, labels, classes, blobs, None, others


def readable(paths, views):
    """(which photos could be read: scored, no NaN; the printable names of the others, said: they are not in the
    metrics)."""
    keep = ~np.isnan(views[0]).any(1)
    unreadable = [messages.printable(f) for f in paths[~keep]]
    if unreadable:
        messages.warn(
            f"skipped {len(unreadable)} unreadable image(s), not in the metrics: " + messages.first_few(unreadable, 5)
        )
    return keep, unreadable


class Scored(NamedTuple):
    """The readable photos, in order, and what the model said of them."""

    paths: np.ndarray
    labels: np.ndarray  # the class index of each photo
    classes: list  # what the labels index (an export's: model.CLASSES)
    y: np.ndarray  # 1 for a malignant photo, 0 for a benign one
    p: np.ndarray  # calibrated P(malignant); with --tta, averaged over the flips
    probabilities: np.ndarray  # the calibrated class probabilities
    plain: np.ndarray  # P(malignant) of the photo itself, no flips
    uncalibrated: np.ndarray  # P(malignant) before the stored calibration (with --tta, over the same flips)
    distances: object  # the familiarity distances, or None (a model without the measure)
    rows: object  # the photos' manifest rows (an export's metadata rows), or None
    blobs: object  # the photos' bytes, read from shards, or None
    unreadable: list  # the photos left out, by their printable names
    others: int  # files in DATA_DIR that are not images


def scored_photos(net, meta, args, device):
    """Score the photos of DATA_DIR (or EXTERNAL); the unreadable ones left out, counted and said. A model whose
    outputs are not numbers is refused, and so are photos without both sides."""
    paths, labels, classes, blobs, rows, others = photos_to_score(args, meta)
    views, distances = score(net, paths, meta, args, device, blobs)
    keep, unreadable = readable(paths, views)
    paths, labels, views = paths[keep], labels[keep], [v[keep] for v in views]
    distances = None if distances is None else distances[keep]
    external = args.external is not None
    rows = rows[keep].reset_index(drop=True) if external else manifest_rows(args.data_dir, paths)
    if not np.isfinite(np.concatenate(views)).all():
        raise messages.UserError(
            f"{messages.printable(args.model)} gives outputs that are not numbers; the model is broken, retrain it"
        )
    y = labels if external else model.malignant_mask(meta)[labels].astype(int)
    p, probabilities = model.predictions(views, meta)
    plain = model.predictions(views[:1], meta)[0]  # the photo itself, no flips
    uncalibrated = model.predictions(views, dict(meta, calibration=None))[0]  # with --tta, over the same flips
    if min(int((y == 0).sum()), int((y == 1).sum())) == 0:
        lacking = "malignant" if (y == 0).all() else "benign"
        raise messages.UserError(
            f"no readable {lacking} images in {messages.printable(args.photos)}; both sides are needed"
        )
    return Scored(
        paths, labels, classes, y, p, probabilities, plain, uncalibrated, distances, rows, blobs, unreadable, others
    )


def calibration_report(y, before, after, fitted, args):
    """ECE, Brier score and log-loss of P(malignant) before and after the stored calibration, with intervals;
    a warning where the test ECE is worse after it."""
    report = {"method": (fitted or {}).get("method", "none")}
    for when, p in (("before", before), ("after", after)):
        for key, measure in (
            ("ece", metrics.ece),
            ("brier", metrics.brier),
            ("log_loss", metrics.log_loss),
        ):
            report[f"{key}_{when}"] = float(measure(y, p))
            if args.n_bootstrap:
                ci = metrics.bootstrap_ci(y, p, args.n_bootstrap, args.seed, metric_fn=measure)["value"]
                report[f"{key}_{when}_ci95"] = list(ci)
        report[f"bins_{when}"] = metrics.reliability(y, p)
    report["ece_after_if_calibrated"] = metrics.calibrated_ece_limit(after, seed=args.seed)
    if report["method"] != "none" and report["ece_after"] > report["ece_before"]:
        report["warning"] = (
            f"the calibration made P(malignant) less well calibrated on these photos (ECE {report['ece_before']:.3f} "
            f"before, {report['ece_after']:.3f} after): read P as a rough score here, not a chance"
        )
    return report


def operating_report(y, p, meta, scores, ci):
    """The stored operating point against what it reached on these photos; a warning when it did not hold."""
    op = meta.get("operating_point") or dict(target_sensitivity=0.0)
    target, low = op["target_sensitivity"], ci["sensitivity"]
    found = dict(
        op,
        test_sensitivity=scores["sensitivity"],
        test_sensitivity_ci95=list(low),
        test_specificity=scores["specificity"],
        test_specificity_ci95=list(ci["specificity"]),
    )
    known = bool(np.isfinite(low).all())  # --n-bootstrap 0: no interval, so neither inside nor outside it
    outside = bool(target) and known and not (low[0] <= target <= low[1])
    found["target_outside_interval"] = outside if known else None
    if outside:
        found["warning"] = (
            f"the target sensitivity {target:.2f} lies outside the test sensitivity's 95% interval "
            f"({low[0]:.2f}-{low[1]:.2f}): the operating point chosen on {card.chosen_on(meta)[2]} did not hold here"
        )
    test_op = dict(sensitivity=scores["sensitivity"], specificity=scores["specificity"])
    found["flags"] = metrics.operating_point_warning(test_op)
    return found


def figures_outside(y, scores, cal, meta, kind="test"):
    """A warning for each figure on these photos (labels y) that lies outside what validation (or the folds, out of
    fold) stated: the sensitivity and specificity at the threshold outside the 95% interval stated for them, and
    the ECE (ece_outside). Each says whether the figure also lies outside what this many photos can show
    (metrics.held_share): then it did not hold; else only more photos can tell."""
    op, found = meta.get("operating_point") or {}, []
    source = card.chosen_on(meta)[0]  # validation, or out-of-fold: the photos that stated the figures
    stated_by = "the folds" if source == "out-of-fold" else "validation"
    y = np.asarray(y)
    counts = dict(sensitivity=("malignant", int(np.sum(y == 1))), specificity=("benign", int(np.sum(y != 1))))
    for key in ("sensitivity", "specificity"):
        stated = op.get(f"{key}_ci95")
        if stated and not stated[0] <= scores[key] <= stated[1]:
            side, n_new = counts[key]
            said = f"the {kind} {key} {scores[key]:.0%} lies outside the 95% interval {stated_by} stated for it "
            said += f"({metrics.percent_range(op[key], stated)})"
            found.append(said + noise_text(op[key], op.get(f"n_{side}"), n_new, scores[key], side))
    said = ece_outside(len(y), cal, (meta.get("calibration") or {}).get("val_ece_after"), source, kind)
    return found + [said] if said else found


def ece_outside(n_photos, cal, val_ece, source, kind):
    """The ECE's warning, or None: validation's (or the out-of-fold) ECE outside the interval of the ECE on these
    n_photos, said to hold or not by whether that ECE is above what a calibrated P scores on them 95 times in 100
    (cal["ece_after_if_calibrated"]); or that alone, which is calibration these photos show to be off. No
    interval (--n-bootstrap 0) and no limit: nothing to say."""
    low, high = cal.get("ece_after_ci95") or (float("nan"),) * 2
    ece, limit = cal["ece_after"], cal.get("ece_after_if_calibrated")
    beyond = limit is not None and ece > limit
    if val_ece is not None and low == low and not low <= val_ece <= high:
        said = f"the {source} ECE {val_ece:.3f} lies outside the 95% interval of the {kind} ECE ({ece:.3f}, "
        if beyond or limit is None:
            return said + f"{low:.3f}-{high:.3f}): the calibration did not hold here"
        return said + (
            f"{low:.3f}-{high:.3f}), though a calibrated P scores up to {limit:.3f} on these {n_photos} photos "
            "(95 times in 100): more photos will tell"
        )
    if beyond:
        return (
            f"the {kind} ECE {ece:.3f} is more than a calibrated P scores on these {n_photos} photos 95 times in "
            f"100 ({limit:.3f}): the calibration did not hold here"
        )
    return None


def noise_text(stated, n_stated, n_new, value, side):
    """How a share outside its stated interval ends its warning: outside what n_new photos can show as well (it
    did not hold), or inside it (more photos would tell); nothing to say of the noise without the stated count."""
    found = metrics.held_share(stated, n_stated, value, n_new)
    if found is None:
        return ": it did not hold here"
    held, shown = found
    if held:
        return f", though {n_new} {side} photos can show {shown} there (95 times in 100): more photos will tell"
    return f" and beyond what {n_new} {side} photos can show there ({shown}): it did not hold here"


def subgroups(y, p, rows, args):
    """{factor: {value: photos, sides, ROC-AUC with CI or 'too few photos to report'}} for the subgroup factors
    whose column the manifest has; None where there is no manifest for these photos."""
    if rows is None:
        return {}
    values = isic.factor_values(rows)
    found = {}
    for factor in isic.SUBGROUPS:
        column = isic.FACTORS[factor]
        if column not in rows and not (factor == "body site" and "anatom_site_general" in rows):
            continue
        found[factor] = {}
        for value in sorted(set(values[factor]), key=lambda v: (v == "", v)):
            at = (values[factor] == value).to_numpy()
            group = dict(photos=int(at.sum()), benign=int((y[at] == 0).sum()), malignant=int((y[at] == 1).sum()))
            if min(group["benign"], group["malignant"]) < card.MIN_PER_CLASS:
                group["text"] = "too few photos to report"
            else:
                group["roc_auc"] = float(metrics.roc_auc(y[at], p[at]))
                low, high = metrics.bootstrap_ci(
                    y[at], p[at], args.n_bootstrap or 200, args.seed, metric_fn=metrics.roc_auc
                )["value"]
                group.update(roc_auc_ci95=[low, high], text=f"{group['roc_auc']:.3f} ({low:.3f}-{high:.3f})")
            found[factor][value or "unknown"] = group
    return found


def compare_tta(y, plain, flipped, threshold, n, seed):
    """Plain vs flip-averaged predictions on the same photos, with a paired bootstrap CI of the AUC gain."""
    keys = ("roc_auc", "accuracy", "sensitivity", "specificity")
    result = {
        name: {k: metrics.binary_metrics(y, p, threshold)[k] for k in keys}
        for name, p in (("plain", plain), ("tta", flipped))
    }

    def gain(y, p):
        return metrics.roc_auc(y, p[..., 1]) - metrics.roc_auc(y, p[..., 0])

    low, high = metrics.bootstrap_ci(y, np.stack([plain, flipped], 1), n, seed, metric_fn=gain)["value"]
    verdict = "makes no clear difference to the ROC-AUC"
    if low > 0:
        verdict = "helps the ROC-AUC"
    elif high < 0:
        verdict = "hurts the ROC-AUC"
    result.update(
        roc_auc_gain=result["tta"]["roc_auc"] - result["plain"]["roc_auc"],
        roc_auc_gain_ci95=[low, high],
        verdict=f"TTA {verdict} on this split",
    )
    moved = [k for k in ("sensitivity", "specificity") if result["tta"][k] != result["plain"][k]]
    if moved:  # the threshold and the calibration were chosen without TTA: say what changed at it, claim no more
        result["threshold_note"] = (
            "at the threshold chosen without TTA, "
            + " and ".join(f"{k} {result['plain'][k]:.3f} -> {result['tta'][k]:.3f}" for k in moved)
            + "; TTA has no threshold or calibration of its own (predict.py --tta uses this one)"
        )
    print(f"\nTTA vs plain on the same images (threshold {threshold:.4f})\n{'':<14}{'plain':>8}{'TTA':>8}")
    for key in keys:
        print(f"{key.replace('roc_auc', 'ROC-AUC'):<14}{result['plain'][key]:>8.3f}{result['tta'][key]:>8.3f}")
    print(f"{result['verdict']}: ROC-AUC change {result['roc_auc_gain']:+.3f} (95% CI {low:+.3f} to {high:+.3f})")
    if "threshold_note" in result:
        print(f"but {result['threshold_note']}")
    return result


def familiarity_report(distances, meta):
    """How many of the photos are unfamiliar to the model (predict.py gives them no answer), or None for a model
    without the measure."""
    if distances is None:
        return None
    flagged = int(sum(familiarity.unfamiliar(d, meta) for d in distances))
    found = {k: v for k, v in meta["familiarity"].items() if k not in familiarity.ARRAYS}
    return dict(found, n_photos=len(distances), n_unfamiliar=flagged, share_unfamiliar=flagged / len(distances))


def unfamiliar_photos(paths, names, distances, meta):
    """The photos predict.py would call unfamiliar, furthest first: [{path, true (label), distance}]."""
    if distances is None:
        return []
    flagged = [i for i, d in enumerate(distances) if familiarity.unfamiliar(d, meta)]
    flagged.sort(key=lambda i: -np.nan_to_num(distances[i], nan=np.inf))
    return [dict(path=str(paths[i]), true=str(names[i]), distance=float(distances[i])) for i in flagged]


def photos_described(y, rows, name, source):
    """Who the photos are: their count, malignant share and image types (from the manifest or the export's
    metadata; unknown without), and how the pictures name them."""
    n = len(y)
    types = {"unknown": n}
    if rows is not None and "image_type" in rows:
        types = dict(rows.image_type.replace("", "unknown").value_counts())
    split = f"external validation: {name}" if name else "test split"
    shown = f"{split} ({messages.printable(source)}), n = {n}: {int(y.sum())} malignant"
    return dict(n_photos=n, malignant_share=float(y.mean()), image_types={str(k): int(v) for k, v in types.items()},
                shown=shown)  # fmt: skip


def findings(found, meta, name, described, args):
    """What evaluation.json reports of the photos found: the metrics with their 95% intervals at the stored
    threshold, the operating point, the calibration, the subgroups, the mistakes, the unfamiliar photos."""
    y, p, threshold = found.y, found.p, float(meta["threshold"])
    scores = metrics.binary_metrics(y, p, threshold)
    ci = {key: (float("nan"),) * 2 for key in NAMES}
    if args.n_bootstrap:
        ci = metrics.bootstrap_ci(y, p, args.n_bootstrap, args.seed, threshold=threshold)
    at_chance = metrics.at_chance(ci["roc_auc"]) if args.n_bootstrap else None  # no interval: unknown
    return dict(
        written_by=files.TAG,
        model=args.model,
        model_sha256=files.file_sha256(args.model),
        data_dir=args.photos,
        external_validation=name,
        tta=args.tta,
        threshold=threshold,
        threshold_source=f"{card.chosen_on(meta)[2]} (stored in the checkpoint)",
        n_images={c: int((found.labels == i).sum()) for i, c in enumerate(found.classes)},
        n_unreadable=len(found.unreadable),
        unreadable=found.unreadable,
        n_non_image_files=found.others,
        photos={k: v for k, v in described.items() if k != "shown"},
        metrics=scores,
        ci95={k: list(v) for k, v in ci.items()},
        at_chance=at_chance,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        val_metrics=meta.get("val_metrics", {}),
        operating_point=operating_report(y, p, meta, scores, ci),
        calibration=calibration_report(y, found.uncalibrated, p, meta.get("calibration"), args),
        subgroups=subgroups(y, p, found.rows, args),
        mistakes=most_confident_mistakes(found.paths, y, p, args.n_mistakes, threshold),
        familiarity=familiarity_report(found.distances, meta),
        unfamiliar_photos=unfamiliar_photos(found.paths, np.array(found.classes)[found.labels], found.distances, meta),
    )


def report(found, meta, name, described, args, out):
    """(evaluation.json's report: the findings, the warnings, a lesion-type model's types (their confusion picture
    drawn), with --tta the comparison with plain (printed); the warnings of figures outside what was stated)."""
    result = findings(found, meta, name, described, args)
    op, cal = result["operating_point"], result["calibration"]
    outside = figures_outside(found.y, result["metrics"], cal, meta, "external" if name else "test")
    result["warnings"] = [warning for warning in (op.get("warning"), op["flags"], *outside) if warning]
    if len(found.classes) > 2 and args.external is None:
        picture = out["types_confusion.png"]
        result["types"] = types_report(found.labels, found.probabilities, found.classes, picture, args, described)
    if args.tta:
        threshold = result["threshold"]
        result["tta_comparison"] = compare_tta(found.y, found.plain, found.p, threshold, args.n_bootstrap, args.seed)
    return result, outside


def write_outputs(result, found, meta, name, described, out, args):
    """Write evaluation.json (strict JSON), the pictures and the results into the card, and say where."""
    files.write_text(out["evaluation.json"], json.dumps(without_nan(result), indent=2), "evaluation")
    written = [out["evaluation.json"], *pictures(result, found.y, found.p, meta, out, described["shown"], found.blobs)]
    record_in_card(args, meta, name, without_nan(result))
    section = f"External validation: {messages.printable(name)}" if name else "Test"
    names = ", ".join(map(messages.printable, written))
    print(f"\nwrote {names}; the results are in the model card {messages.printable(args.card)} ({section})")


def said_warnings(result, outside):
    """The warnings, last, on stderr: a model that cannot be told from chance, an operating point that did not
    hold or is of little use, a calibration that made P worse, the figures outside what was stated."""
    if result["at_chance"]:
        low, high = result["ci95"]["roc_auc"]
        messages.warn(
            "on these photos the model cannot be told from chance: the 95% interval of its ROC-AUC "
            f"({low:.3f}-{high:.3f}) includes 0.5"
        )
    op, cal = result["operating_point"], result["calibration"]
    for caution in (op.get("warning"), op["flags"], cal.get("warning")):
        if caution:
            messages.warn(caution)
    for caution in outside:
        messages.warn(caution)


def record_in_card(args, meta, name, found):
    """Put the results found (of the model file of found["model_sha256"]) into the model card beside the model, as
    the test's or as external validation name's; the other data sets' results and the exports it lists stay."""
    sha256 = found["model_sha256"]
    kept = card.embedded(args.card, sha256) or {}
    test, externals = kept.get("test"), kept.get("externals") or {}
    if name:
        externals[name] = card.card_evaluation(found)
    else:
        test = card.card_evaluation(found)
    card.write_card(args.card, meta, os.path.basename(args.model), test, externals, sha256, kept.get("exports"))


def pictures(result, y, p, meta, out, shown, blobs):
    """Draw the confusion matrix, the ROC curve, the reliability diagram and the most confident mistakes, each
    saying which photos it shows (shown); returns the paths written."""
    scores, cal, threshold = result["metrics"], result["calibration"], result["threshold"]
    chosen = f"chosen on {card.chosen_on(meta)[1]}"
    title = f"{messages.printable(os.path.basename(result['model']))}, threshold {threshold:.3f} ({chosen})"
    side_counts = [[scores["tn"], scores["fp"]], [scores["fn"], scores["tp"]]]
    plots.confusion(side_counts, model.CLASSES, title, out["confusion_matrix.png"], shown)
    plots.roc(y, p, scores, result["ci95"]["roc_auc"], out["roc_curve.png"], shown)
    curves = {
        "before calibration": (cal["bins_before"], cal["ece_before"]),
        "after calibration": (cal["bins_after"], cal["ece_after"]),
    }
    plots.reliability(curves, out["calibration.png"], shown)
    written = [out[name] for name in ("confusion_matrix.png", "roc_curve.png", "calibration.png")]
    if "types" in result:
        written.append(out["types_confusion.png"])
    if result["mistakes"]:
        cfg = model_file.meta_data_config(meta)
        plots.mistakes(
            result["mistakes"],
            lambda path: photos.eval_crop(photos.load_image(photos.opened(path, blobs)), cfg),
            out["mistakes.png"],
            shown,
        )
        written.append(out["mistakes.png"])
    return written


def show_unfamiliar(result, chosen):
    """The photos beyond the familiarity limit on the console: how many, and the first N_LISTED with their labels;
    chosen: card.chosen_on's (figure, photos, where) of the model."""
    found = result["familiarity"]
    if found:
        print(
            f"\nunfamiliar: {found['n_unfamiliar']} of {found['n_photos']} photos ({found['share_unfamiliar']:.1%})"
            f" lie beyond the familiarity limit {found['limit']:.2f} chosen on {chosen[2]}"
            f" ({familiarity.within_text(found, chosen[1])}); predict.py gives them no answer, the metrics above "
            "include them"
        )
        listed = result["unfamiliar_photos"]
        for photo in listed[:N_LISTED]:
            true = messages.printable(photo["true"])
            print(f"  {true:<12} distance {photo['distance']:.2f}  {messages.printable(photo['path'])}")
        if len(listed) > N_LISTED:
            print(f"  and {len(listed) - N_LISTED} more (the evaluation's JSON file lists them all)")


def show(result, args, chosen):
    """The report on the console; chosen: what the threshold and the familiarity limit were chosen on (the
    validation split, or the out-of-fold predictions: card.chosen_on's triple)."""
    scores, ci, cal, op = result["metrics"], result["ci95"], result["calibration"], result["operating_point"]
    counts = ", ".join(f"{n} {messages.printable(c)}" for c, n in result["n_images"].items())
    flips = ", P(malignant) averaged over flips (TTA)" if args.tta else ""
    print(f"\n{messages.printable(args.model)} on {messages.printable(args.photos)}: {counts} images{flips}")
    print(f"threshold {result['threshold']:.4f} (stored in the checkpoint, chosen on {chosen[2]}; not tuned here)\n")
    print(f"{'metric':<22}{'value':>7}   95% CI ({args.n_bootstrap} bootstrap resamples)")
    for key, name in NAMES.items():
        interval = f"[{ci[key][0]:.3f}, {ci[key][1]:.3f}]" if metrics.known_interval(ci[key]) else "not computed"
        print(f"{name:<22}{scores[key]:>7.3f}   {interval}")
    print(f"\nconfusion matrix (rows true, columns predicted)\n{'':<12}{'benign':>11}{'malignant':>11}")
    print(f"{'benign':<12}{scores['tn']:>11}{scores['fp']:>11}\n{'malignant':<12}{scores['fn']:>11}{scores['tp']:>11}")
    if op.get("target_sensitivity"):
        print(
            f"\noperating point: target sensitivity {op['target_sensitivity']:.2f}, reached "
            f"{metrics.percent_range(scores['sensitivity'], ci['sensitivity'])}; specificity "
            f"{metrics.percent_range(scores['specificity'], ci['specificity'])}"
        )
    print(
        f"\ncalibration ({cal['method']}): ECE {cal['ece_before']:.3f} before, {cal['ece_after']:.3f} after; "
        f"Brier {cal['brier_before']:.3f} before, {cal['brier_after']:.3f} after; a perfectly calibrated P scores "
        f"an ECE up to {cal['ece_after_if_calibrated']:.3f} on these {sum(result['n_images'].values())} photos "
        "(95 times in 100)"
    )
    show_unfamiliar(result, chosen)
    if "types" in result:
        show_types(result["types"])
    show_subgroups(result["subgroups"])
    show_mistakes(result["mistakes"])


def show_types(types):
    """A lesion-type model's types on the console: the balanced accuracy, each type's sensitivity and ROC-AUC."""
    low, high = types["balanced_accuracy_ci95"]
    print(
        f"\nlesion types: balanced accuracy {types['balanced_accuracy']:.3f} [{low:.3f}, {high:.3f}] (chance "
        f"{types['chance']:.3f})"
    )
    for name, auc in types["one_vs_rest_auc"].items():
        t = types["types"][name]
        low, high = t["sensitivity_ci95"]
        print(
            f"  {messages.printable(name):<30} sensitivity {t['sensitivity']:.3f} [{low:.3f}, {high:.3f}], "
            f"ROC-AUC {auc:.3f} (vs rest)"
        )


def show_subgroups(found):
    """The ROC-AUC by subgroup on the console, a line per factor."""
    for factor, groups in found.items():
        print(
            f"\nROC-AUC by {factor}: "
            + "; ".join(f"{messages.printable(g)} ({r['photos']} photos) {r['text']}" for g, r in groups.items())
        )


def show_mistakes(mistakes):
    """The most confident mistakes on the console."""
    if mistakes:
        print(f"\n{len(mistakes)} most confident mistakes\n{'P(malignant)':>12}  {'true':<10}file")
        for m in mistakes:
            print(f"{m['p_malignant']:>12.3f}  {m['true']:<10}{messages.printable(m['path'])}")


def main(argv=None):
    args = parse_args(argv)
    device = devices.pick_device()
    net, meta = model.load_checkpoint(args.model, device)
    name = evaluation_name(args, meta)
    out = output_paths(args, name)  # an external validation's own: the test run's stay as they are
    found = scored_photos(net, meta, args, device)
    described = photos_described(found.y, found.rows, name, args.photos)
    result, outside = report(found, meta, name, described, args, out)
    show(result, args, card.chosen_on(meta))
    write_outputs(result, found, meta, name, described, out, args)
    said_warnings(result, outside)


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main))
