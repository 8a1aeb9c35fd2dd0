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

import numpy as np
from tqdm import tqdm

import model
from skinlesion import (
    card,
    dataset,
    devices,
    evaluation,
    familiarity,
    files,
    flags,
    folders,
    isic,
    messages,
    metrics,
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
    cfg = model.meta_data_config(meta)
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


def main(argv=None):
    args = parse_args(argv)
    device = devices.pick_device()
    net, meta = model.load_checkpoint(args.model, device)
    external, name = args.external is not None, evaluation_name(args, meta)
    out = output_paths(args, name)  # an external validation's own: the test run's stay as they are
    if external:
        paths, labels, classes, blobs, rows = export_photos(args)
        others = 0
    else:
        paths, labels, classes, blobs, others = split_photos(args, meta)

    # scores of every view; the unreadable photos left out, counted
    views, distances = score(net, paths, meta, args, device, blobs)
    keep = ~np.isnan(views[0]).any(1)
    unreadable = [messages.printable(f) for f in paths[~keep]]
    if unreadable:
        messages.warn(
            f"skipped {len(unreadable)} unreadable image(s), not in the metrics: " + messages.first_few(unreadable, 5)
        )
    paths, labels, views = paths[keep], labels[keep], [v[keep] for v in views]
    distances = None if distances is None else distances[keep]
    rows = rows[keep].reset_index(drop=True) if external else manifest_rows(args.data_dir, paths)
    if not np.isfinite(np.concatenate(views)).all():
        raise messages.UserError(
            f"{messages.printable(args.model)} gives outputs that are not numbers; the model is broken, retrain it"
        )
    y = labels if external else model.malignant_mask(meta)[labels].astype(int)
    p, probabilities = model.predictions(views, meta)
    plain = model.predictions(views[:1], meta)[0]  # the photo itself, no flips
    uncalibrated = model.predictions(views, dict(meta, calibration=None))[0]  # with --tta, over the same flips
    counts = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
    if min(int((y == 0).sum()), int((y == 1).sum())) == 0:
        lacking = "malignant" if (y == 0).all() else "benign"
        raise messages.UserError(
            f"no readable {lacking} images in {messages.printable(args.photos)}; both sides are needed"
        )

    # metrics with intervals, the operating point, calibration, subgroups, types
    threshold = float(meta["threshold"])
    scores = metrics.binary_metrics(y, p, threshold)
    ci = {key: (float("nan"),) * 2 for key in NAMES}
    if args.n_bootstrap:
        ci = metrics.bootstrap_ci(y, p, args.n_bootstrap, args.seed, threshold=threshold)
    at_chance = metrics.at_chance(ci["roc_auc"]) if args.n_bootstrap else None  # no interval: unknown
    described = evaluation.photos_described(y, rows, name, args.photos)
    result = dict(
        written_by=files.TAG,
        model=args.model,
        model_sha256=files.file_sha256(args.model),
        data_dir=args.photos,
        external_validation=name,
        tta=args.tta,
        threshold=threshold,
        threshold_source=f"{card.chosen_on(meta)[2]} (stored in the checkpoint)",
        n_images=counts,
        n_unreadable=len(unreadable),
        unreadable=unreadable,
        n_non_image_files=others,
        photos={k: v for k, v in described.items() if k != "shown"},
        metrics=scores,
        ci95={k: list(v) for k, v in ci.items()},
        at_chance=at_chance,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        val_metrics=meta.get("val_metrics", {}),
        operating_point=evaluation.operating_report(y, p, meta, scores, ci),
        calibration=evaluation.calibration_report(y, uncalibrated, p, meta.get("calibration"), args),
        subgroups=evaluation.subgroups(y, p, rows, args),
        mistakes=most_confident_mistakes(paths, y, p, args.n_mistakes, threshold),
        familiarity=evaluation.familiarity_report(distances, meta),
        unfamiliar_photos=evaluation.unfamiliar_photos(paths, np.array(classes)[labels], distances, meta),
    )
    op, cal = result["operating_point"], result["calibration"]
    outside = evaluation.figures_outside(y, scores, cal, meta, "external" if name else "test")
    result["warnings"] = [warning for warning in (op.get("warning"), op["flags"], *outside) if warning]
    if len(classes) > 2 and not external:
        result["types"] = types_report(labels, probabilities, classes, out["types_confusion.png"], args, described)
    if args.tta:
        result["tta_comparison"] = evaluation.compare_tta(y, plain, p, threshold, args.n_bootstrap, args.seed)
    show(result, args, card.chosen_on(meta))

    # outputs: the report, the pictures, the card
    files.write_text(out["evaluation.json"], json.dumps(without_nan(result), indent=2), "evaluation")
    written = [out["evaluation.json"], *pictures(result, y, p, meta, out, described["shown"], blobs)]
    record_in_card(args, meta, name, without_nan(result))
    section = f"External validation: {messages.printable(name)}" if name else "Test"
    names = ", ".join(map(messages.printable, written))
    print(f"\nwrote {names}; the results are in the model card {messages.printable(args.card)} ({section})")
    if at_chance:
        low, high = ci["roc_auc"]
        messages.warn(
            "on these photos the model cannot be told from chance: the 95% interval of its ROC-AUC "
            f"({low:.3f}-{high:.3f}) includes 0.5"
        )
    for caution in (result["operating_point"].get("warning"), result["operating_point"]["flags"], cal.get("warning")):
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
        cfg = model.meta_data_config(meta)
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
        types = result["types"]
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
    for factor, groups in result["subgroups"].items():
        print(
            f"\nROC-AUC by {factor}: "
            + "; ".join(f"{messages.printable(g)} ({r['photos']} photos) {r['text']}" for g, r in groups.items())
        )
    if result["mistakes"]:
        print(f"\n{len(result['mistakes'])} most confident mistakes\n{'P(malignant)':>12}  {'true':<10}file")
        for m in result["mistakes"]:
            print(f"{m['p_malignant']:>12.3f}  {m['true']:<10}{messages.printable(m['path'])}")


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main))
