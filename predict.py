"""
Classify skin-lesion photos as benign or malignant with the model AItraining.py trained.

    python predict.py photo.jpg                          # first line: "Prediction: benign" or "Prediction: malignant"
    python predict.py photos/ --csv predictions.csv      # every image under a folder, one line each, and a CSV
    python predict.py a.jpg b.png --tta                  # average P(malignant) over 4 flips of each photo
    python predict.py photo.jpg --explain                # also save gradcam/photo_jpg_gradcam.png: the evidence
    python predict.py photo.jpg --model skin_model.onnx  # onnxruntime (export_onnx.py): no torch needed

P(malignant) is calibrated on the validation split (it reads as a chance where malignant lesions are about as
common as there), and a photo is called malignant when it reaches the threshold AItraining.py chose on the
validation split for its target sensitivity (stored in the model file; --threshold overrides it). P is printed
with enough digits to see which side of the threshold it lies on; within model.BORDERLINE (0.02) it is called
borderline. A lesion-type model also names the most likely type and the next two. A model file that is broken
or not ours is refused, and a photo for which the model gives no valid probability is an error, never a label.
The model file's SHA-256 is printed after the predictions: compare it with the published one (a model file is
code-like: load only those you trust). Names from the model or a folder are printed escaped (cli.printable).

A photo unlike the model's training photos (its familiarity distance beyond the limit AItraining.py chose on the
validation photos; skinlesion/familiarity.py) gets no benign/malignant answer: alone, predict.py prints
"Prediction: unfamiliar" and one line why, and exits with status 3 (UNFAMILIAR_EXIT); in a folder its line and
CSV row say unfamiliar and the summary counts it. --show-unfamiliar also shows the answer, marked unreliable.
Folders are searched recursively (each real folder once, links included) for files ending in photos.IMAGE_EXTS;
other files and unreadable images are skipped, counted and named on stderr.

The model sees a centre crop of the photo (the shorter side resized, the rest cut off): keep the lesion in the
middle. --explain saves into EXPLAIN_DIR, under a name of its own per photo: the crop, where the evidence for
malignant lies and where the evidence for benign lies, on one scale (Grad-CAM of the malignant log-odds on
EfficientNet-B0's final feature map; with the ONNX model, the same map from the file's 'cam' output).

A research tool, not a medical device: a doctor must examine any lesion that worries you.
"""

from skinlesion import interrupts

if __name__ == "__main__":  # first, before the libraries load: a Ctrl-C while they do is one line, not a traceback
    interrupts.one_line_while_loading()

import csv
import io
import os
import sys

import numpy as np
from tqdm import tqdm

import model
from skinlesion import (
    card,
    checkpoints,
    cli,
    devices,
    explain,
    familiarity,
    files,
    folders,
    numbers,
    photos,
)

# -----------------------------------------------------------------------------
MODEL = "skin_model.pth"  # checkpoint from AItraining.py, or a .onnx file from export_onnx.py (onnxruntime)
TTA = False  # average P(malignant) over the photo and its horizontal, vertical and double flip
EXPLAIN = False  # also save a Grad-CAM picture per photo into EXPLAIN_DIR: the evidence for malignant and benign
EXPLAIN_DIR = "gradcam"  # folder for the --explain pictures (made if missing; never one of the photo folders)
CSV = None  # path: also write file, prediction, p_malignant, threshold, borderline (type, p_type) per photo
THRESHOLD = None  # None = the threshold stored in the model; a number from 0 to 1 overrides it
PREVALENCE = None  # share of malignant photos where you use it, 0.0001 to 0.9999; None = the training photos'
SHOW_UNFAMILIAR = False  # also show the answer for a photo unlike the training photos, marked unreliable
OVERWRITE = False  # replace output files that this project did not write (never done without it)
# -----------------------------------------------------------------------------
HEADER = ["file", "prediction", "p_malignant", "threshold", "borderline"]
FAMILIARITY_HEADER = ["familiarity_distance", "familiarity_limit"]  # for a model with a familiarity measure
UNFAMILIAR_EXIT = 3  # exit status for a single photo unlike the training photos (no answer)
STRAYED = (  # the caution for an int8 model (export_onnx.py's twin) that its comparison did not clear
    "this int8 model's answers strayed from the full model's on its validation photos; use the full ONNX file"
)


def parse_args(argv=None):
    """The flags, checked before anything slow (the model, the photos)."""
    args = cli.parse_flags(
        globals(),
        argv,
        ("images", "image files and/or folders (searched recursively)"),
        types={"THRESHOLD": float, "CSV": str, "PREVALENCE": float},
    )
    inputs = [args.model, *args.images]
    if args.csv:
        files.check_output(args.csv, "--csv", "predictions", inputs, args.overwrite)
        cli.check_writable(args.csv, "--csv")
    if args.explain:
        folders.check_output_folder(args.explain_dir, "--explain-dir", [args.model, *args.images])
        photo_folders = [path for path in args.images if os.path.isdir(path)]
        folders.check_outside(args.explain_dir, "--explain-dir", photo_folders)
        cli.check_writable(args.explain_dir, "--explain-dir", folder=True)
    return args


def malignant_sum_text(probabilities, meta):
    """'Melanoma 0.219 + Basal cell carcinoma 0.010 = 0.229': the malignant types' calibrated probabilities, whose
    sum is P(malignant)."""
    names, mask = meta.get("class_names") or meta["classes"], model.malignant_mask(meta)
    parts = [f"{names[i]} {probabilities[i]:.3f}" for i in np.flatnonzero(mask)]
    return f"{' + '.join(parts)} = {probabilities[mask].sum():.3f}"


def onnx_predictor(session, meta, tta, explain_it):
    """photo -> (calibrated P(malignant), class probabilities, signed evidence map or None, familiarity distance
    or None) with onnxruntime; tta averages over model.TTA_FLIPS (one view per run: works whatever batch size the
    file takes); the distance is the photo's own (no flips)."""
    name = session.get_inputs()[0].name
    outputs = ["logits", "p_malignant", "cam"] if explain_it else ["logits", "p_malignant"]
    if meta.get("familiarity"):
        outputs.append("familiarity_distance")

    def predict_one(img):
        x = photos.preprocess(img, model.meta_data_config(meta))
        runs = []
        for dims in model.TTA_FLIPS if tta else [()]:
            view = np.ascontiguousarray(np.flip(x, dims) if dims else x)[None]
            try:
                runs.append(session.run(outputs, {name: view}))
            except Exception as e:  # onnxruntime failing at run time: the file, the machine
                cli.die(f"onnxruntime failed on the model ({type(e).__name__}: {str(e)[:200]}); export it again")
        probabilities = np.mean([model.calibrated_probabilities(r[0], meta) for r in runs], axis=0)[0]
        cam = runs[0][2][0] if explain_it else None
        distance = float(runs[0][-1][0]) if meta.get("familiarity") else None
        return float(np.mean([r[1][0] for r in runs])), probabilities, cam, distance

    return predict_one


def torch_predictor(net, meta, tta, explain_it):
    """photo -> (calibrated P(malignant), class probabilities, signed evidence map or None, familiarity distance
    or None) with PyTorch."""
    import torch

    device = next(net.parameters()).device

    def predict_one(img):
        x = torch.from_numpy(photos.preprocess(img, model.meta_data_config(meta))).to(device)[None]
        p, probabilities = model.predictions(model.view_logits(net, x, tta), meta)
        cam = explain.gradcam(net, x, model.malignant_mask(meta)) if explain_it else None
        distances = familiarity.distances_of(net, x, meta)
        return float(p[0]), probabilities[0], cam, None if distances is None else float(distances[0])

    return predict_one


def decision_texts(p, threshold):
    """P and the threshold with enough digits (3 to 6) to see which side P lies on, and 'borderline' or ''."""
    digits = next((d for d in range(3, 7) if f"{p:.{d}f}" != f"{threshold:.{d}f}"), 6)
    near = "borderline" if abs(p - threshold) < model.BORDERLINE else ""
    return f"{p:.{digits}f}", f"{threshold:.{digits}f}", near


def likely_types(probabilities, meta):
    """[(type name, P)] of a lesion-type model, most likely first (the original label values where known)."""
    names = meta.get("class_names") or meta["classes"]
    order = np.argsort(-np.asarray(probabilities), kind="stable")
    return [(cli.printable(names[i]), float(probabilities[i])) for i in order]


def photo_caution(path, img):
    """A warning for a photo far too small or too elongated to show a lesion, else None."""
    w, h = img.size
    if min(w, h) < 16 or max(w, h) > 8 * min(w, h):
        return (
            f"{cli.printable(path)} is {w} x {h} px: far too small or too elongated to show a lesion; do not trust it"
        )
    return None


def load(args):
    """(photo -> prediction, meta) for the model file, checked when loaded: a broken one is refused here."""
    if checkpoints.is_onnx(args.model):
        session, meta = model.load_onnx(args.model)
        return onnx_predictor(session, meta, args.tta, args.explain), meta
    net, meta = model.load_checkpoint(args.model, devices.pick_device())
    return torch_predictor(net, meta, args.tta, args.explain), meta


def model_cautions(meta):
    """What the model file says about itself that a reader must know: at chance, a useless operating point."""
    cautions = []
    if meta.get("at_chance"):
        ci = meta.get("val_auc_ci95")
        interval = f" (its validation ROC-AUC 95% interval {ci[0]:.3f}-{ci[1]:.3f} includes 0.5)" if ci else ""
        cautions.append(f"this model cannot be told from chance{interval}; do not rely on its predictions")
    op = meta.get("operating_point")
    warning = numbers.operating_point_warning(op) if op else None
    if warning:
        cautions.append(warning + " on its validation photos")
    weak = None if meta.get("at_chance") else numbers.weak_model_warning(op, meta.get("val_auc_ci95"))
    if weak:
        cautions.append(weak + "; read its answers as a rough guide at best")
    quantised = meta.get("quantised")
    if isinstance(quantised, dict) and not quantised.get("within_tolerance"):
        cautions.append(STRAYED)
    return cautions


def prevalence_texts(meta, prevalence, threshold_given):
    """(what P assumes, what P means at --prevalence: PPV and NPV of the calls there, or None)."""
    prior = meta.get("prior_malignant")
    if prior is None:  # an earlier model file: nothing to say
        return None, None
    assumes = (
        f"P(malignant) assumes about {prior:.0%} of photos are malignant, as in the training photos; where they "
        "are rarer or more common, pass --prevalence (e.g. --prevalence 0.05)"
    )
    op = meta.get("operating_point")
    if prevalence is None or not op or threshold_given:
        return assumes, None
    ppv, npv = numbers.predictive_values(op["sensitivity"], op["specificity"], prevalence)
    return assumes, (
        f"at a prevalence of {prevalence:.1%}, from the validation sensitivity and specificity at this threshold, a "
        f"'malignant' call is right {ppv:.0%} of the time (PPV) and a 'benign' call {npv:.0%} of the time (NPV)"
    )


def test_figures(path, meta):
    """The test results evaluate.py put in the model card beside the model file (for this very model: its
    SHA-256, or an ONNX file's source_sha256), in words, or None."""
    sha256 = meta.get("source_sha256") or files.file_sha256(path)
    test = card.earlier_evaluations(os.path.splitext(path)[0] + ".md", sha256)[0]
    if not test:
        return None
    figures = {k: (test["metrics"][k], test["ci95"].get(k)) for k in ("sensitivity", "specificity", "roc_auc")}
    return card.tested_text(figures)


def main(argv=None):
    args = parse_args(argv)
    model.check_model_file(args.model, "train one with 'python AItraining.py' (or export one with export_onnx.py)")
    images, skipped = photos.find_images(args.images)
    if not images:
        others = f"; skipped {len(skipped)} other files" if skipped else ""
        given = cli.first_few(args.images, 5)
        cli.die(f"no images in {given} (looked for {', '.join(photos.IMAGE_EXTS)} files{others})")
    single = len(args.images) == 1 and len(images) == 1 and not os.path.isdir(args.images[0])
    if single:  # read it before loading the model: a bad file is reported at once
        first, why = photos.try_load_image(images[0])
        if first is None:
            fix = "; pass a .jpg or .png photo" if why.startswith(photos.UNREADABLE) else ""  # else: crop it
            cli.die(f"{cli.printable(images[0])} is {why}{fix}")
    pictures = explain.gradcam_names(images, args.explain_dir) if args.explain else {}
    for picture in pictures.values():
        files.check_output(picture, "--explain-dir", "picture", [args.model, *images], args.overwrite)

    sha256 = files.file_sha256(args.model)
    predict_one, meta = load(args)
    cfg, types = model.meta_data_config(meta), len(meta["classes"]) > 2
    threshold = float(meta["threshold"]) if args.threshold is None else args.threshold
    cautions = model_cautions(meta)
    if args.tta and args.threshold is None:
        cautions.append(
            "--tta averages over flips, but the threshold and calibration were chosen without them (evaluate.py "
            "--tta shows what changes at the threshold); pass --threshold to choose your own"
        )
    for caution in cautions:
        print(f"caution: {caution}", file=sys.stderr)
    if not meta.get("familiarity"):
        print(
            "note: this model file has no familiarity measure (an earlier version): a photo unlike its training "
            "photos is not flagged; retrain it with AItraining.py",
            file=sys.stderr,
        )
    flips = ", mean over 4 flips" if args.tta else ""
    prior = meta.get("prior_malignant")
    if args.prevalence is not None and prior is None:
        model_file = cli.printable(args.model)
        cli.die(f"--prevalence: {model_file} does not record the share of malignant training photos; retrain it")

    # predictions
    rows, borderline, strange = [], 0, False
    bar = tqdm(images, unit="image", disable=len(images) <= 20 or None)  # a progress bar only for many photos
    for path in bar:
        img, why = (first, None) if single else photos.try_load_image(path)
        if img is None:
            skipped.append((path, why))
            continue
        p, probabilities, cam, distance = predict_one(img)
        if not numbers.is_probability(p):
            if single:
                cli.die(
                    f"the model gave no valid probability for {cli.printable(path)} (P = {p}); the model file is "
                    "broken: retrain or re-export it"
                )
            skipped.append((path, f"the model gave no valid probability (P = {p})"))
            continue
        answer = model.CLASSES[int(p >= threshold)]
        strange = familiarity.unfamiliar(distance, meta)  # unlike the training photos: no answer
        shown = args.show_unfamiliar or not strange
        label = "unfamiliar" if strange else answer
        p_text, t_text, near = decision_texts(p, threshold)
        borderline += bool(near) and not strange
        ranked = likely_types(probabilities, meta) if types else []
        rows.append([cli.printable(path), label, f"{p:.6f}", f"{threshold:g}", str(bool(near)).lower()])
        if ranked:
            rows[-1] += [ranked[0][0], f"{ranked[0][1]:.6f}", *(f"{q:.6f}" for q in probabilities)]
        if not shown:  # the row says unfamiliar, without the answer
            rows[-1] = [cell if i in (0, 1, 3) else "" for i, cell in enumerate(rows[-1])]
        if distance is not None:
            rows[-1] += [f"{distance:.4f}", f"{meta['familiarity']['limit']:.4f}"]
        caution = photo_caution(path, img)
        if caution:
            cli.warn(caution)
        if single:
            print(f"Prediction: {label}")
            if strange:
                print(familiarity.unfamiliar_text(distance, meta, shown))
            if strange and shown:
                print(f"Unreliable answer: {answer}")
            close = f": borderline, within {model.BORDERLINE} of the threshold" if near else ""
            if shown:
                print(f"P(malignant) = {p_text} (threshold {t_text}{flips}){close}")
            if shown and args.prevalence is not None:
                at = float(numbers.reweighted(p, prior, args.prevalence))
                print(f"At a prevalence of {args.prevalence:.1%}: P(malignant) = {at:.3f} (the call above uses P)")
            if ranked and shown:
                then = ", ".join(f"{name} (P = {q:.3f})" for name, q in ranked[1:3])
                print(f"Type: {ranked[0][0]} (P = {ranked[0][1]:.3f}); next: {then}")
                print(f"Malignant types (they add up to P(malignant)): {malignant_sum_text(probabilities, meta)}")
        elif strange:
            limit = meta["familiarity"]["limit"]
            unreliable = f"; unreliable answer: {answer} (P(malignant) = {p_text})" if shown else "; no answer"
            far = f"familiarity distance {distance:.2f} > limit {limit:.2f}: unlike the training photos"
            bar.write(f"{cli.printable(path)}: Prediction: unfamiliar ({far}){unreliable}")
        else:
            kind = f"; type {ranked[0][0]} (P = {ranked[0][1]:.3f})" if ranked else ""
            if args.prevalence is not None:
                at = float(numbers.reweighted(p, prior, args.prevalence))
                kind += f"; at prevalence {args.prevalence:.1%}: P = {at:.3f}"
            close = ", borderline" if near else ""
            bar.write(f"{cli.printable(path)}: Prediction: {label} (P(malignant) = {p_text}{close}){kind}")
        if args.explain:
            notes = cautions + (
                [f"P(malignant) is within {model.BORDERLINE} of the threshold: borderline"] if near else []
            )
            notes += [familiarity.unfamiliar_sentence(meta) + ": unreliable"] if strange else []
            title = f"{cli.printable(os.path.basename(path))}: {label}, P(malignant) = {p_text}"
            folders.made_folder(args.explain_dir, "predict.py", "Grad-CAM folder")
            blank = explain.save_gradcam(photos.eval_crop(img, cfg), cam, pictures[path], title, notes)
            none_for = "".join(
                f"; no region of the photo stands out as evidence for {b} (P(malignant) = {p_text} is the model's "
                "answer for the photo as a whole)"
                for b in blank
            )
            bar.write(f"Grad-CAM saved to {cli.printable(pictures[path])}{none_for}")

    # summary, skipped photos, the CSV
    for path, why in skipped:
        cli.warn(f"skipped {cli.printable(path)}: {why}")
    if not rows:
        cli.die(f"none of the {len(skipped)} files could be classified; pass .jpg or .png photos")
    if not single:
        n, odd = (sum(row[1] == label for row in rows) for label in ("malignant", "unfamiliar"))
        near_count = f"; {borderline} borderline" if borderline else ""
        skip_count = f"; {len(skipped)} skipped (listed on stderr)" if skipped else ""
        odd_count = f", {odd} unfamiliar (unlike the training photos: no answer)" if meta.get("familiarity") else ""
        print(
            f"{len(rows)} images: {n} malignant, {len(rows) - n - odd} benign{odd_count} (threshold {threshold:.3f}"
            f"{flips}){near_count}{skip_count}"
        )
    withheld = single and strange and not args.show_unfamiliar  # no answer: nothing about its threshold
    if meta.get("operating_point") and args.threshold is None and not withheld:
        print(f"Operating point: {numbers.operating_point_text(meta['operating_point'])}.")
    tested = None if args.tta or args.threshold is not None or withheld else test_figures(args.model, meta)
    if tested:
        print(f"Tested: {tested}.")
    assumes, at_prevalence = prevalence_texts(meta, args.prevalence, args.threshold is not None or withheld)
    if assumes and not withheld:  # no P was shown: nothing to say of what it assumes
        print(f"Note: {assumes}.")
    if at_prevalence:
        print(f"Prevalence: {at_prevalence}.")
    print(f"Model file: {cli.printable(args.model)}, SHA-256 {sha256} (compare it with the published one)")
    if args.csv:
        text = io.StringIO()
        header = HEADER + ["type", "p_type"] + [f"p_{c}" for c in meta["classes"]] if types else HEADER
        header = header + FAMILIARITY_HEADER if meta.get("familiarity") else header
        csv.writer(text).writerows([header] + [[files.csv_cell(cell) for cell in row] for row in rows])
        files.write_text(args.csv, text.getvalue(), "predictions")
        print(f"predictions written to {cli.printable(args.csv)}")
    print(
        "note: a research tool, not a medical device; have a doctor examine any lesion that worries you",
        file=sys.stderr,
    )
    if single and strange:
        sys.exit(UNFAMILIAR_EXIT)


if __name__ == "__main__":
    interrupts.run_script(main)
