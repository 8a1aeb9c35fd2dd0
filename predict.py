"""
Classify skin-lesion photos as benign or malignant with the model AItraining.py trained (in full: docs/reference.md).
Not a medical device: a doctor must examine any lesion that worries you.

    python predict.py photo.jpg                          # first line: "Prediction: benign" or "Prediction: malignant"
    python predict.py photos/ --csv predictions.csv      # every image under a folder, one line each, and a CSV
    python predict.py a.jpg b.png --tta                  # average P(malignant) over 4 flips of each photo
    python predict.py photo.jpg --explain                # also save gradcam/photo_jpg_gradcam.png: the evidence
    python predict.py photo.jpg --model skin_model.onnx  # onnxruntime (export_onnx.py): no torch needed
"""

from skinlesion import interrupts

if __name__ == "__main__":  # first, before the libraries load: a Ctrl-C while they do is one line, not a traceback
    interrupts.one_line_while_loading()

import csv
import io
import os
import sys
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

import model
from skinlesion import (
    answer,
    card,
    devices,
    explain,
    familiarity,
    files,
    flags,
    folders,
    messages,
    metrics,
    model_file,
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
UNRELIABLE = "Unreliable: "  # what marks each line of an answer shown anyway for an unfamiliar photo


def parse_args(argv=None):
    """The flags, checked before anything slow (the model, the photos)."""
    args = flags.parse_flags(
        globals(),
        argv,
        ("images", "image files and/or folders (searched recursively)"),
        types={"THRESHOLD": float, "CSV": str, "PREVALENCE": float},
    )
    inputs = [args.model, *args.images]
    if args.csv:
        files.check_output(args.csv, "--csv", "predictions", inputs, args.overwrite)
        flags.check_writable(args.csv, "--csv")
    if args.explain:
        folders.check_output_folder(args.explain_dir, "--explain-dir", [args.model, *args.images])
        photo_folders = [path for path in args.images if os.path.isdir(path)]
        folders.check_outside(args.explain_dir, "--explain-dir", photo_folders)
        flags.check_writable(args.explain_dir, "--explain-dir", folder=True)
    return args


def malignant_sum_text(probabilities, meta):
    """'Melanoma 0.219 + Basal cell carcinoma 0.010 = 0.229': the malignant types' calibrated probabilities, whose
    sum is P(malignant)."""
    names, mask = meta.get("class_names") or meta["classes"], model.malignant_mask(meta)
    parts = [f"{messages.printable(names[i])} {probabilities[i]:.3f}" for i in np.flatnonzero(mask)]
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
        x = photos.preprocess(img, model_file.meta_data_config(meta))
        runs = []
        for dims in model.TTA_FLIPS if tta else [()]:
            view = np.ascontiguousarray(np.flip(x, dims) if dims else x)[None]
            try:
                runs.append(session.run(outputs, {name: view}))
            except Exception as e:  # onnxruntime failing at run time: the file, the machine
                why = messages.printable(str(e)[:200])  # its message may quote the file's own node names
                raise messages.UserError(
                    f"onnxruntime failed on the model ({type(e).__name__}: {why}); export it again"
                ) from None
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
        x = torch.from_numpy(photos.preprocess(img, model_file.meta_data_config(meta))).to(device)[None]
        p, probabilities = model.predictions(model.view_logits(net, x, tta), meta)
        cam = explain.gradcam(net, x, model.malignant_mask(meta)) if explain_it else None
        distances = familiarity.distances_of(net, x, meta)
        return float(p[0]), probabilities[0], cam, None if distances is None else float(distances[0])

    return predict_one


def load(args):
    """(photo -> prediction, meta) for the model file, checked when loaded: a broken one is refused here."""
    if model_file.is_onnx(args.model):
        session, meta = model.load_onnx(args.model)
        return onnx_predictor(session, meta, args.tta, args.explain), meta
    net, meta = model.load_checkpoint(args.model, devices.pick_device())
    return torch_predictor(net, meta, args.tta, args.explain), meta


def tested_results(path, meta, sha256):
    """(the 'Tested' and 'External validation' lines' texts, the test sensitivity and specificity at the stored
    threshold or None): from the model card beside the model file where it holds this very model's results (its
    SHA-256, sha256, or an ONNX file's source_sha256), else from an ONNX file's card summary (export_onnx.py's)."""
    sha256 = meta.get("source_sha256") or sha256
    test, externals = card.earlier_evaluations(os.path.splitext(path)[0] + ".md", sha256)
    summary = meta.get("card_summary") or {}
    tested, others, point = summary.get("tested"), summary.get("externals") or [], summary.get("test_point")
    if test or externals:
        tested = answer.tested_text(answer.evaluation_figures(test)) if test else None
        point = {key: test["metrics"][key] for key in ("sensitivity", "specificity")} if test else None
        others = answer.external_texts(externals)
    lines = [f"Tested: {tested}."] if tested else []
    return lines + [f"External validation: {text}." for text in others], point


class Verdict(NamedTuple):
    """What the model said of one photo."""

    p: float  # calibrated P(malignant)
    probabilities: np.ndarray  # the calibrated class probabilities
    cam: object  # the signed evidence map, or None
    distance: object  # the familiarity distance, or None (a model without the measure)
    call: str  # benign or malignant, at the threshold
    unfamiliar: bool  # unlike the training photos: no answer unless asked for (--show-unfamiliar)


def answer_lines(found, meta, threshold, args):
    """A single photo's answer: P against the threshold, P at --prevalence, the types; each line marked
    unreliable for an unfamiliar photo (shown only with --show-unfamiliar)."""
    p_text, t_text, near = answer.decision_texts(found.p, threshold, answer.BORDERLINE)
    flips = ", mean over 4 flips" if args.tta else ""
    close = f": borderline, within {answer.BORDERLINE} of the threshold" if near else ""
    lines = [f"P(malignant) = {p_text} (threshold {t_text}{flips}){close}"]
    if args.prevalence is not None:
        at = float(metrics.reweighted(found.p, meta["prior_malignant"], args.prevalence))
        share = messages.percent_text(args.prevalence)
        lines.append(f"At a prevalence of {share}: P(malignant) = {at:.3f} (the call above uses P)")
    if len(meta["classes"]) > 2:
        ranked = answer.likely_types(found.probabilities, meta)
        then = ", ".join(f"{name} (P = {q:.3f})" for name, q in ranked[1:3])
        lines.append(f"Type: {ranked[0][0]} (P = {ranked[0][1]:.3f}); next: {then}")
        lines.append(f"Malignant types (they add up to P(malignant)): {malignant_sum_text(found.probabilities, meta)}")
    return [answer.marked(line, found.unfamiliar) for line in lines]


def single_lines(found, meta, threshold, args):
    """What predict.py prints for one photo: the prediction, why an unfamiliar photo gets none, and the answer
    where it is shown."""
    shown = answer.answer_shown(found.unfamiliar, args.show_unfamiliar)
    lines = [f"Prediction: {'unfamiliar' if found.unfamiliar else found.call}"]
    if found.unfamiliar:
        lines.append(familiarity.unfamiliar_text(found.distance, meta, shown))
    if found.unfamiliar and shown:
        lines.append(f"Unreliable answer: {found.call}")
    return lines + (answer_lines(found, meta, threshold, args) if shown else [])


def folder_line(path, found, meta, threshold, args):
    """One photo's line among many."""
    p_text, _, near = answer.decision_texts(found.p, threshold, answer.BORDERLINE)
    if found.unfamiliar:
        limit = meta["familiarity"]["limit"]
        unreliable = "; no answer"
        if answer.answer_shown(found.unfamiliar, args.show_unfamiliar):
            unreliable = f"; unreliable answer: {found.call} (P(malignant) = {p_text})"
        far = f"familiarity distance {found.distance:.2f} > limit {limit:.2f}: unlike the training photos"
        return f"{messages.printable(path)}: Prediction: unfamiliar ({far}){unreliable}"
    kind = ""
    if len(meta["classes"]) > 2:
        name, q = answer.likely_types(found.probabilities, meta)[0]
        kind = f"; type {name} (P = {q:.3f})"
    if args.prevalence is not None:
        at = float(metrics.reweighted(found.p, meta["prior_malignant"], args.prevalence))
        kind += f"; at prevalence {messages.percent_text(args.prevalence)}: P = {at:.3f}"
    close = ", borderline" if near else ""
    return f"{messages.printable(path)}: Prediction: {found.call} (P(malignant) = {p_text}{close}){kind}"


def csv_row(path, found, meta, threshold):
    """The photo's CSV row (HEADER, the types' columns, the familiarity columns); an unfamiliar photo's says
    unfamiliar, with its P and types left empty unless --show-unfamiliar shows them."""
    label = "unfamiliar" if found.unfamiliar else found.call
    near = answer.is_borderline(found.p, threshold)
    row = [messages.printable(path), label, f"{found.p:.6f}", f"{threshold:g}", str(bool(near)).lower()]
    if len(meta["classes"]) > 2:
        ranked = answer.likely_types(found.probabilities, meta)
        row += [ranked[0][0], f"{ranked[0][1]:.6f}", *(f"{q:.6f}" for q in found.probabilities)]
    return row


def explain_photo(path, img, found, pictures, cautions, meta, threshold, args):
    """Save the photo's Grad-CAM picture; none for an unfamiliar photo whose answer is withheld, and the picture
    of one shown anyway is titled and noted unreliable. Returns the line that says where it is (or why none)."""
    if not answer.answer_shown(found.unfamiliar, args.show_unfamiliar):
        return (
            f"no Grad-CAM for {messages.printable(path)}: {familiarity.unfamiliar_sentence(meta)} (--show-unfamiliar "
            "saves it, unreliable)"
        )
    p_text, _, near = answer.decision_texts(found.p, threshold, answer.BORDERLINE)
    notes = cautions + ([f"P(malignant) is within {answer.BORDERLINE} of the threshold: borderline"] if near else [])
    notes += [familiarity.unfamiliar_sentence(meta) + ": unreliable"] if found.unfamiliar else []
    label = f"unfamiliar, answer {found.call}" if found.unfamiliar else found.call
    title = answer.marked(
        f"{messages.printable(os.path.basename(path))}: {label}, P(malignant) = {p_text}", found.unfamiliar
    )
    folders.made_folder(args.explain_dir, "predict.py", "Grad-CAM folder")
    crop = photos.eval_crop(img, model_file.meta_data_config(meta))
    blank = explain.save_gradcam(crop, found.cam, pictures[path], title, notes)
    none_for = "".join(
        f"; no region of the photo stands out as evidence for {b} (P(malignant) = {p_text} is the model's "
        "answer for the photo as a whole)"
        for b in blank
    )
    return f"Grad-CAM saved to {messages.printable(pictures[path])}{none_for}"


def closing_lines(meta, args, single_unfamiliar, sha256):
    """The lines after the predictions: what the operating point means, the test and external figures, what P
    assumes, PPV and NPV at --prevalence. None after a single unfamiliar photo whose answer is withheld (no P was
    shown); its PPV and NPV marked unreliable where it was shown anyway. sha256: the model file's."""
    if single_unfamiliar and not args.show_unfamiliar:
        return []
    lines = []
    if meta.get("operating_point") and args.threshold is None:
        said = metrics.operating_point_text(meta["operating_point"], card.chosen_on(meta)[1])  # validation or folds
        lines.append(f"Operating point: {said}.")
    tested, point = ([], None) if args.tta or args.threshold is not None else tested_results(args.model, meta, sha256)
    assumes, at_prevalence = answer.prevalence_texts(meta, args.prevalence, args.threshold is not None, point)
    lines += tested + ([f"Note: {assumes}."] if assumes else [])
    if at_prevalence:
        lines.append(answer.marked(f"Prevalence: {at_prevalence}.", single_unfamiliar))
    return lines


def find_photos(args):
    """(the photos under the paths given, the other files skipped [(path, why)]); none is an error."""
    images, skipped = photos.find_images(args.images)
    if not images:
        others = f"; skipped {len(skipped)} other files" if skipped else ""
        given = messages.first_few(args.images, 5)
        raise messages.UserError(f"no images in {given} (looked for {', '.join(photos.IMAGE_EXTS)} files{others})")
    return images, skipped


def read_single(path):
    """The one photo named, read before the model loads: a bad file is reported at once."""
    first, why = photos.try_load_image(path)
    if first is None:
        fix = "; pass a .jpg or .png photo" if why.startswith(photos.UNREADABLE) else ""  # else: crop it
        raise messages.UserError(f"{messages.printable(path)} is {why}{fix}")
    return first


def checked_pictures(images, args):
    """{photo: the path of its Grad-CAM picture} with --explain, each ours to replace; {} without."""
    pictures = explain.gradcam_names(images, args.explain_dir) if args.explain else {}
    for picture in pictures.values():
        files.check_output(picture, "--explain-dir", "picture", [args.model, *images], args.overwrite)
    return pictures


def said_cautions(meta, args):
    """Say on stderr what to be careful of with this model (and --tta with its threshold) and that a model without
    a familiarity measure flags no photo; refuse --prevalence for a model that does not record the share of
    malignant training photos. Returns the cautions (each Grad-CAM picture notes them)."""
    cautions = answer.model_cautions(meta)
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
    if args.prevalence is not None and meta.get("prior_malignant") is None:
        said = f"{messages.printable(args.model)} does not record the share of malignant training photos"
        raise messages.UserError(f"--prevalence: {said}; retrain it")
    return cautions


def photo_row(path, found, meta, threshold, args):
    """The photo's CSV row as written: csv_row's, its answer's cells emptied where the answer is withheld, and the
    familiarity columns for a model with the measure."""
    row = csv_row(path, found, meta, threshold)
    if not answer.answer_shown(found.unfamiliar, args.show_unfamiliar):  # the row says unfamiliar, without the answer
        row = [cell if i in (0, 1, 3) else "" for i, cell in enumerate(row)]
    if found.distance is not None:
        row += [f"{found.distance:.4f}", f"{meta['familiarity']['limit']:.4f}"]
    return row


class Classified(NamedTuple):
    """What a run found over its photos."""

    rows: list  # one CSV row per photo answered (photo_row)
    borderline: int  # how many answered photos lie within answer.BORDERLINE of the threshold
    unfamiliar: bool  # whether the (last, for a single photo: the) photo answered is unlike the training photos
    skipped: list  # [(path, why)]: the photos that could not be read or got no valid probability


def classify(images, first, predict_one, meta, threshold, pictures, cautions, args):
    """Classify each photo and print its answer as it comes: a single photo's lines (first: that photo, already
    read; None for many), or one line per photo of many; with --explain, its Grad-CAM picture."""
    single = first is not None
    rows, borderline, unfamiliar, skipped = [], 0, False, []
    bar = tqdm(images, unit="image", disable=len(images) <= 20 or None)  # a progress bar only for many photos
    for path in bar:
        img, why = (first, None) if single else photos.try_load_image(path)
        if img is None:
            skipped.append((path, why))
            continue
        p, probabilities, cam, distance = predict_one(img)
        if not metrics.is_probability(p):
            if single:
                raise messages.UserError(
                    f"the model gave no valid probability for {messages.printable(path)} (P = {p}); the model file is "
                    "broken: retrain or re-export it"
                )
            skipped.append((path, f"the model gave no valid probability (P = {p})"))
            continue
        unfamiliar = familiarity.unfamiliar(distance, meta)  # unlike the training photos: no answer
        found = Verdict(p, probabilities, cam, distance, model.CLASSES[int(p >= threshold)], unfamiliar)
        borderline += answer.is_borderline(p, threshold) and not unfamiliar
        rows.append(photo_row(path, found, meta, threshold, args))
        caution = photos.size_caution(path, img)
        if caution:
            messages.warn(caution)
        if single:
            print("\n".join(single_lines(found, meta, threshold, args)))
        else:
            bar.write(folder_line(path, found, meta, threshold, args))
        if args.explain:
            bar.write(explain_photo(path, img, found, pictures, cautions, meta, threshold, args))
    return Classified(rows, borderline, unfamiliar, skipped)


def count_line(rows, borderline, skipped, meta, threshold, args):
    """A folder run's counts: malignant, benign, unfamiliar (for a model with the measure), borderline, skipped."""
    malignant, unfamiliar = (sum(row[1] == label for row in rows) for label in ("malignant", "unfamiliar"))
    benign = len(rows) - malignant - unfamiliar
    flips = ", mean over 4 flips" if args.tta else ""
    near_count = f"; {borderline} borderline" if borderline else ""
    skip_count = f"; {len(skipped)} skipped (listed on stderr)" if skipped else ""
    unfamiliar_count = ""
    if meta.get("familiarity"):
        unfamiliar_count = f", {unfamiliar} unfamiliar (unlike the training photos: no answer)"
    return (
        f"{len(rows)} images: {malignant} malignant, {benign} benign{unfamiliar_count} (threshold {threshold:.3f}"
        f"{flips}){near_count}{skip_count}"
    )


def write_csv(path, rows, meta):
    """The predictions CSV: HEADER (the types' and the familiarity columns where the model has them), a row per
    photo; written whole or not at all."""
    text = io.StringIO()
    names = [f"p_{messages.printable(c)}" for c in meta["classes"]]
    header = HEADER + ["type", "p_type"] + names if len(meta["classes"]) > 2 else HEADER
    header = header + FAMILIARITY_HEADER if meta.get("familiarity") else header
    csv.writer(text).writerows([header] + [[files.csv_cell(cell) for cell in row] for row in rows])
    files.write_text(path, text.getvalue(), "predictions")
    print(f"predictions written to {messages.printable(path)}")


def main(argv=None):
    args = parse_args(argv)
    model_file.check_model_file(args.model, "train one with 'python AItraining.py' (or export one with export_onnx.py)")
    images, skipped = find_photos(args)
    single = len(args.images) == 1 and len(images) == 1 and not os.path.isdir(args.images[0])
    first = read_single(images[0]) if single else None
    pictures = checked_pictures(images, args)
    sha256 = files.file_sha256(args.model)
    predict_one, meta = load(args)
    threshold = float(meta["threshold"]) if args.threshold is None else args.threshold
    cautions = said_cautions(meta, args)

    found = classify(images, first, predict_one, meta, threshold, pictures, cautions, args)
    skipped += found.skipped
    for path, why in skipped:
        messages.warn(f"skipped {messages.printable(path)}: {why}")
    if not found.rows:
        raise messages.UserError(f"none of the {len(skipped)} files could be classified; pass .jpg or .png photos")
    if not single:
        print(count_line(found.rows, found.borderline, skipped, meta, threshold, args))
    for line in closing_lines(meta, args, single and found.unfamiliar, sha256):
        print(line)
    print(f"Model file: {messages.printable(args.model)}, SHA-256 {sha256} (compare it with the published one)")
    if args.csv:
        write_csv(args.csv, found.rows, meta)
    print(
        "note: a research tool, not a medical device; have a doctor examine any lesion that worries you",
        file=sys.stderr,
    )
    if single and found.unfamiliar:
        return UNFAMILIAR_EXIT  # the script's exit status (interrupts.run_script hands it on; None is 0)


if __name__ == "__main__":
    sys.exit(interrupts.run_script(main))
